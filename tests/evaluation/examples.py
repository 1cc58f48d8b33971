"""Hand-made held-out examples for the evaluation tests, as the real ``EvalExample``."""

from flan_moe.data.heldout import EvalExample


def example(
    task: str,
    subtask: str,
    answer: str,
    example_id: str,
    options: tuple[str, ...] = (),
    choices: tuple[str, ...] = (),
) -> EvalExample:
    """An example with an empty prompt whose gold target is its answer."""
    return EvalExample(task=task, subtask=subtask, inputs="", target=answer, answer=answer,
                       options=options, choices=choices, example_id=example_id)  # fmt: skip
