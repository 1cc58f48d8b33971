"""Weight averaging, model merging and proxy-tuning's logit arithmetic.

Pure functions on param trees (nested dicts of arrays, as ``load_params`` returns):

* ``soups``: linear / uniform soups, WARM-style averaging, greedy soup, task
  arithmetic, TIES, DARE (mergekit's semantics; see the module docstring);
* ``alignment``: MoE expert permutation alignment (weight matching, Hungarian);
* ``proxy``: proxy-tuning at decode time (base + alpha * (expert - antiexpert)).
"""
