"""flan_moe.cli.merge compares architectures, not training-time dropout rates."""

from flan_moe.cli.merge import architecture
from flan_moe.model.config import get_config


def test_dropout_rates_do_not_change_the_architecture():
    pretrained = get_config("switch_tiny_8")
    tuned = pretrained.replace(dropout_rate=0.05,
                               moe=pretrained.moe.replace(expert_dropout_rate=0.2))  # fmt: skip
    assert tuned != pretrained and architecture(tuned) == architecture(pretrained)
    wider = pretrained.replace(d_ff=2 * pretrained.d_ff)
    assert architecture(wider) != architecture(pretrained)
    dense = get_config("switch_tiny_dense")
    assert architecture(dense.replace(dropout_rate=0.1)) == architecture(dense)
