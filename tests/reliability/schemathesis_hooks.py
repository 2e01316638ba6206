"""schemathesis hooks (`SCHEMATHESIS_HOOKS=tests.reliability.schemathesis_hooks`): hostile bodies
for the free-form parts of the contract, which the OpenAPI schema cannot describe (`features` is an
object of anything). Mixed into the generated bodies of /recall, /score and /similar:

- huge integers (past float range: `math.isfinite(10**400)` raises), huge negative ones;
- lone surrogates (valid in JSON text as `\\ud800`, not encodable as UTF-8) in feature values, in
  feature names, in ids;
- deep lists, and lists of mixed types where a list of ids is expected;
- ids just past `max_id_length` (256) in `user_id`, `items[].item_id`, `exclude_item_ids`, history;
- filters on known and unknown fields, with every operator and made-up ones, and each value above.

Every one must be answered with a 2xx or a 4xx; schemathesis' `not_a_server_error` check fails on a
5xx.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

# Feature names the demo schema knows, so values reach the transforms, plus arbitrary ones.
KNOWN = ["age", "gender", "occupation", "zip", "history", "genres", "release_year", "title"]
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
PLAIN = st.text(st.characters(codec="utf-8"), max_size=6)
# Text that holds at least one lone surrogate among ordinary characters.
NASTY_TEXT = st.builds(lambda a, s, b: a + s + b, PLAIN, SURROGATES, PLAIN)
HUGE_INT = st.one_of(
    st.integers(min_value=10**308, max_value=10**600),
    st.integers(min_value=-(10**600), max_value=-(10**308)),
)
LONG_ID = st.text(st.sampled_from("abcé"), min_size=257, max_size=300)


def _deep(leaf: Any, depth: int) -> Any:
    value: Any = leaf
    for _ in range(depth):
        value = [value]
    return value


# Each value is hostile in one way: the generator spends no examples on polite input here (the
# schema-driven strategy beside it does that).
VALUE = st.one_of(
    HUGE_INT,
    NASTY_TEXT,
    st.lists(st.one_of(NASTY_TEXT, LONG_ID), min_size=1, max_size=3),
    st.builds(_deep, st.one_of(NASTY_TEXT, HUGE_INT), st.integers(min_value=2, max_value=300)),
)
FEATURES = st.dictionaries(st.one_of(st.sampled_from(KNOWN), NASTY_TEXT), VALUE, min_size=1, max_size=3)
ID = st.one_of(st.sampled_from(["1", "2", "50"]), NASTY_TEXT, LONG_ID)

# Filters: the demo's filterable fields and others, every operator and made-up ones, values of the
# right type and hostile ones (/recall and /similar).
FILTER_VALUE = st.one_of(
    VALUE,
    st.lists(st.sampled_from(["Comedy", "Drama", "Western"]), min_size=1, max_size=3),
    st.integers(1900, 2000),
    st.booleans(),
)
FILTER = st.dictionaries(
    st.one_of(st.sampled_from(["genres", "release_year", "title", "item_id"]), NASTY_TEXT),
    st.dictionaries(
        st.one_of(st.sampled_from(["any", "all", "none", "gt", "gte", "lt", "lte", "eq"]), NASTY_TEXT),
        FILTER_VALUE,
        min_size=1,
        max_size=2,
    ),
    min_size=1,
    max_size=2,
)
RECALL = st.one_of(
    st.fixed_dictionaries({"features": FEATURES}, optional={"user_id": ID, "k": st.integers(1, 20)}),
    st.fixed_dictionaries({"user_id": ID}, optional={"exclude_item_ids": st.lists(ID, max_size=4)}),
    st.fixed_dictionaries({"user_id": ID, "filter": FILTER}, optional={"k": st.integers(1, 20)}),
)
SIMILAR = st.fixed_dictionaries(
    {"item_id": ID},
    optional={
        "filter": FILTER,
        "features": FEATURES,
        "exclude_item_ids": st.lists(ID, max_size=4),
        "k": st.integers(1, 20),
    },
)
SCORE = st.fixed_dictionaries(
    {
        "items": st.lists(
            st.fixed_dictionaries({"item_id": ID}, optional={"features": FEATURES}), min_size=1, max_size=3
        )
    },
    optional={"user_id": ID, "features": FEATURES},
)


@schemathesis.hook
def before_generate_body(context: schemathesis.HookContext, strategy: st.SearchStrategy[Any]) -> Any:
    op = context.operation
    if op is None or op.method.upper() != "POST":
        return strategy
    if op.path == "/recall":
        return st.one_of(strategy, RECALL)
    if op.path == "/score":
        return st.one_of(strategy, SCORE)
    if op.path == "/similar":
        return st.one_of(strategy, SIMILAR)
    return strategy
