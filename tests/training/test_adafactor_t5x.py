"""Our Adafactor equals t5x's (``t5x/adafactor.py`` ``Adafactor`` with
``t5x/contrib/moe/adafactor_utils.py`` ``logical_factor_rules``, as the MoE gin files
configure it) for 5 steps on fixed tensors: updates and optimizer-state shapes.

The expected numbers were produced by running t5x's ``Adafactor(learning_rate=0.01,
weight_decay_rate=wd, logical_factor_rules=logical_factor_rules())`` with
``set_param_axes`` and 5 ``apply_gradient`` calls, outside this repository, on the
tensors ``_inputs`` builds. Each tensor's result is recorded as 4 random projections
(numpy ``default_rng(7)`` normals) of its total change and the change's L2 norm.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_moe.training.optimizers import AdafactorLeafState, OptimizerConfig, make_optimizer

TENSORS = [  # name, shape, logical axes
    ("dense", (128, 192), ("embed", "mlp")),
    ("expert_wi", (4, 32, 48), ("expert", "embed", "expert_mlp")),
    ("expert_wo", (4, 48, 32), ("expert", "expert_mlp", "embed")),
    ("router", (32, 8), ("embed", "unmodeled")),
    ("query", (32, 4, 8), ("embed", "heads", "kv")),
    ("out", (4, 8, 32), ("heads", "kv", "embed")),
    ("relpos", (32, 4), ("relpos_buckets", "heads")),
    ("norm", (32,), ("embed",)),
]
SCALES = (1.0, 0.5, 2.0, 1.0, 0.1)  # gradient scale of each step

# t5x's state: (v_row, v_col, v) shapes per param.
T5X_STATE_SHAPES = {
    "dense": ((128,), (192,), (1,)),
    "expert_wi": ((4, 32), (4, 48), (1,)),
    "expert_wo": ((4, 32), (4, 48), (1,)),
    "router": ((1,), (1,), (32, 8)),
    "query": ((32,), (4, 8), (1,)),
    "out": ((32,), (4, 8), (1,)),
    "relpos": ((1,), (1,), (32, 4)),
    "norm": ((1,), (1,), (32,)),
}

T5X_CHANGE = {
    None: {
        "dense": [0.29096363072923354, 0.14280035309660447, 0.2060362205804516,
                  0.022351912358136126, 0.13703409031294392],
        "expert_wi": [0.011194743585160191, 0.10526429769127546, 0.02312171497867277,
                      0.02851423042086082, 0.06807299580415337],
        "expert_wo": [0.00890389975827239, -0.06765850779833063, 0.0008305920346843298,
                      0.06810609782518338, 0.06845656785078308],
        "router": [-0.012292709081732845, 0.019970446148885365, -0.018371097470716757,
                   -0.0008963243230228593, 0.015217848195157367],
        "query": [0.00029219590911962016, 0.0687841232437706, -0.027528833938027172,
                  0.00602379810723911, 0.027440805573803292],
        "out": [-0.04825510962142707, -0.03146157332279343, -0.05710495758708714,
                -0.013755685634232212, 0.02826850930679062],
        "relpos": [-0.005605698736736369, 0.023864737614447417, -0.004863273956706713,
                   -0.010409670488097367, 0.012469374941461582],
        "norm": [-0.001926426861463863, -0.0021246569068688412, 0.001641616524810627,
                 -0.0038652017248884283, 0.003895603771954858],
    },
    0.01: {
        "dense": [0.023118999343393565, 0.06065173581778084, 0.14697903724784256,
                  0.19601497419378466, 0.4065329923208089],
        "expert_wi": [0.1579656162737512, -0.12016623130988988, -0.01958793863110541,
                      -0.1153186614348582, 0.20097610002468252],
        "expert_wo": [0.009812667930500035, -0.05913697942181932, -0.35859791624663084,
                      0.2368135613236217, 0.20325594959026688],
        "router": [-0.014567043211595977, 0.03701259891686791, -0.019922029851245842,
                   -0.04089596525437052, 0.044031196213912493],
        "query": [-0.16913757275866087, 0.13609735939824602, -0.06630131804620618,
                  0.07771848119062733, 0.08099506645700368],
        "out": [-0.09677981298680988, 0.05128573142302231, 0.04933499622089771,
                -0.05374716213210552, 0.08301228680570022],
        "relpos": [-0.006074182649788314, -0.024424937189951285, 0.03850526436066924,
                   -0.06610523258922854, 0.03257440259788869],
        "norm": [-0.034519514173059, 0.007992097407910246, -0.008317620544797504,
                 -0.010836975340135177, 0.014476800273857702],
    },
}  # fmt: skip

# t5x's final params at 12 positions per tensor (numpy default_rng(11) integer indices).
T5X_SAMPLED = {
    None: {
        "dense": [
            0.007596223149448633,
            0.037851348519325256,
            -0.008068128488957882,
            0.02026893012225628,
            0.02466748096048832,
            -0.018390316516160965,
            0.057456497102975845,
            -0.03903059661388397,
            -0.03439498320221901,
            0.01769445650279522,
            -0.05283241719007492,
            -0.0004944244283251464,
        ],
        "expert_wi": [
            0.012455158866941929,
            -0.03518829494714737,
            0.04724660888314247,
            -0.028575832024216652,
            -0.04506941884756088,
            -0.009834341704845428,
            0.021351182833313942,
            -0.038528863340616226,
            0.036181118339300156,
            0.04185476899147034,
            0.057340484112501144,
            -0.0034284202847629786,
        ],
        "expert_wo": [
            -0.06824275106191635,
            0.023761136457324028,
            -0.05063445493578911,
            -0.029831886291503906,
            -0.0031665731221437454,
            -0.024903014302253723,
            -0.012365643866360188,
            0.06535585224628448,
            -0.02433549053966999,
            0.02010936290025711,
            -0.06096005067229271,
            -0.08548244088888168,
        ],
        "router": [
            0.05050355941057205,
            -0.02060866728425026,
            0.07994536310434341,
            0.07502629607915878,
            0.02175900898873806,
            0.017226332798600197,
            -0.06481512635946274,
            -0.012653989717364311,
            0.08490645885467529,
            0.040876489132642746,
            0.04209860786795616,
            -0.06474678963422775,
        ],
        "query": [
            0.02409769967198372,
            -0.02753790095448494,
            -0.029173843562602997,
            -0.04704057052731514,
            0.04024343937635422,
            0.015676656737923622,
            0.02613282948732376,
            -0.030699927359819412,
            -0.03206939622759819,
            0.13085134327411652,
            -0.0989561527967453,
            0.04309350997209549,
        ],
        "out": [
            -0.07113069295883179,
            0.06432365626096725,
            -0.06235984340310097,
            -0.012728056870400906,
            0.02698804810643196,
            0.06343643367290497,
            0.02698804810643196,
            -0.02117861621081829,
            0.025654559955000877,
            0.048009034246206284,
            -0.0043387808836996555,
            0.05839882045984268,
        ],
        "relpos": [
            0.08187166601419449,
            0.0002297136525157839,
            -0.03298262134194374,
            -0.10009809583425522,
            0.027981286868453026,
            0.03064664825797081,
            -0.018911022692918777,
            -0.008936514146625996,
            0.04806743562221527,
            0.0371745340526104,
            0.02664307877421379,
            -0.1102655902504921,
        ],
        "norm": [
            -0.016835540533065796,
            -0.042470112442970276,
            0.007764699403196573,
            0.007764699403196573,
            -0.009007672779262066,
            -0.03302088379859924,
            -0.02436177060008049,
            0.03144131600856781,
            -0.06674586236476898,
            0.02024833671748638,
            0.08170516043901443,
            -0.02436177060008049,
        ],
    },
    0.01: {
        "dense": [
            0.007237009238451719,
            0.03600475564599037,
            -0.007664777338504791,
            0.01927671767771244,
            0.023465199396014214,
            -0.017475584521889687,
            0.05464821681380272,
            -0.037116844207048416,
            -0.032710667699575424,
            0.016812443733215332,
            -0.050235215574502945,
            -0.0004645410517696291,
        ],
        "expert_wi": [
            0.011845871806144714,
            -0.03346293792128563,
            0.04493256285786629,
            -0.02718048170208931,
            -0.042873695492744446,
            -0.009360015392303467,
            0.020299699157476425,
            -0.03663504496216774,
            0.03440291807055473,
            0.03981544449925423,
            0.05452008545398712,
            -0.003254734678193927,
        ],
        "expert_wo": [
            -0.06490511447191238,
            0.022606657817959785,
            -0.0481499545276165,
            -0.028367383405566216,
            -0.0030143484473228455,
            -0.023690029978752136,
            -0.011750532314181328,
            0.06215620040893555,
            -0.02314678579568863,
            0.019122622907161713,
            -0.05796334147453308,
            -0.08130131661891937,
        ],
        "router": [
            0.048031412065029144,
            -0.019598301500082016,
            0.07603036612272263,
            0.07136084139347076,
            0.020686309784650803,
            0.016401885077357292,
            -0.06163843721151352,
            -0.012035318650305271,
            0.08074790984392166,
            0.03888004273176193,
            0.04004557803273201,
            -0.06157468259334564,
        ],
        "query": [
            0.022922536358237267,
            -0.026190107688307762,
            -0.027758503332734108,
            -0.04474085569381714,
            0.03826499357819557,
            0.014905216172337532,
            0.02484816685318947,
            -0.029188739135861397,
            -0.030510999262332916,
            0.12444447726011276,
            -0.09410159289836884,
            0.04098080098628998,
        ],
        "out": [
            -0.06764663010835648,
            0.0611770935356617,
            -0.059305526316165924,
            -0.012122348882257938,
            0.025668926537036896,
            0.06031942367553711,
            0.025668926537036896,
            -0.020157622173428535,
            0.024404650554060936,
            0.04564514011144638,
            -0.004134137649089098,
            0.05553153529763222,
        ],
        "relpos": [
            0.07787613570690155,
            0.0002042205014731735,
            -0.03135678917169571,
            -0.09518159180879593,
            0.02660677209496498,
            0.029142208397388458,
            -0.017990291118621826,
            -0.008512216620147228,
            0.04570881277322769,
            0.03536326438188553,
            0.025354864075779915,
            -0.10483866930007935,
        ],
        "norm": [
            -0.016005786135792732,
            -0.04038792476058006,
            0.007388979196548462,
            0.007388979196548462,
            -0.008558838628232479,
            -0.03140081465244293,
            -0.02317117340862751,
            0.029896289110183716,
            -0.06346329301595688,
            0.019263332709670067,
            0.0776970386505127,
            -0.02317117340862751,
        ],
    },
}


def _inputs():
    rng = np.random.default_rng(42)
    params, grads = {}, [{} for _ in SCALES]
    for name, shape, _ in TENSORS:
        params[name] = (rng.normal(size=shape) * 0.05).astype(np.float32)
        for t, s in enumerate(SCALES):
            grads[t][name] = (rng.normal(size=shape) * s).astype(np.float32)
    return params, grads


def _change_summary(initial, final):
    rng = np.random.default_rng(7)
    out = {}
    for name, shape, _ in TENSORS:
        delta = final[name].astype(np.float64) - initial[name].astype(np.float64)
        ws = [rng.normal(size=shape) for _ in range(4)]
        out[name] = [float(np.sum(w * delta)) for w in ws] + [float(np.linalg.norm(delta))]
    return out


@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_five_steps_equal_t5x(weight_decay):
    params, grads = _inputs()
    config = OptimizerConfig(
        name="adafactor", schedule="constant", learning_rate=0.01, weight_decay=weight_decay or 0.0
    )
    axes = {name: a for name, _, a in TENSORS}
    tx, _, _ = make_optimizer(config, params=params, param_axes=axes)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(p)
    leaves = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, AdafactorLeafState))
    ours = [x for x in leaves if isinstance(x, AdafactorLeafState)]
    names = sorted(name for name, _, _ in TENSORS)  # dict leaves come in sorted key order
    shapes = {name: tuple(tuple(a.shape) for a in leaf) for name, leaf in zip(names, ours)}
    assert shapes == T5X_STATE_SHAPES

    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    for g in grads:
        updates, state = step(p, state, {k: jnp.asarray(v) for k, v in g.items()})
        p = optax.apply_updates(p, updates)
    final = {k: np.asarray(v) for k, v in p.items()}
    got = _change_summary(params, final)
    rng = np.random.default_rng(11)
    for name, shape, _ in TENSORS:
        # The params themselves, relative 1e-5.
        idx = tuple(rng.integers(0, n, size=12) for n in shape)
        want = T5X_SAMPLED[weight_decay][name]
        np.testing.assert_allclose(final[name][idx], want, rtol=1e-5, err_msg=name)
        # Their 5-step change: its norm relative 1e-5, and each projection onto a normal
        # vector w within 1e-5 * |w| * |change| (float32 params leave ~1e-7 of that
        # scale in a projection, which near-cancelling projections cannot beat relatively).
        want = T5X_CHANGE[weight_decay][name]
        np.testing.assert_allclose(got[name][-1], want[-1], rtol=1e-5, err_msg=name)
        scale = 1e-5 * np.sqrt(np.prod(shape)) * want[-1]
        np.testing.assert_allclose(got[name][:4], want[:4], rtol=0, atol=scale, err_msg=name)


def test_params_of_rank_three_need_their_logical_axes():
    tx, _, _ = make_optimizer(OptimizerConfig(), params={"w": jnp.ones((2, 3, 4))})
    with pytest.raises(ValueError, match="logical axis names"):
        tx.init({"w": jnp.ones((2, 3, 4))})
    axes = {"w": ("expert", "embed", "typo_axis")}
    tx, _, _ = make_optimizer(OptimizerConfig(), params={"w": jnp.ones((2, 3, 4))}, param_axes=axes)
    with pytest.raises(ValueError, match="typo_axis"):
        tx.init({"w": jnp.ones((2, 3, 4))})
