"""Decoys match key lengths; the CSPRNG schedule spreads categories; plans rebuild exactly."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from auditor.decoys import control_keys, decoy_by_id, decoy_pool, select_decoys
from auditor.errors import UserError
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig, Plan, build_plan
from auditor.schedule import Csprng, spread_shuffle
from auditor.templates import get_template


def test_decoy_pool_is_large_and_varied() -> None:
    pool = decoy_pool()
    assert len(pool) >= 300 and len(set(pool)) == len(pool)
    assert statistics.pstdev(len(p) for p in pool) > 10


def test_the_unseen_prompts_are_held_out_then_decoys_and_never_trained_on() -> None:
    from auditor.prompts import ordinary_prompts, unseen_name, unseen_prompts

    held, decoys = ordinary_prompts("heldout"), ordinary_prompts("decoy")
    unseen = unseen_prompts()
    assert unseen == held + decoys and len(unseen) >= 600
    assert not set(unseen) & set(ordinary_prompts("train"))
    assert unseen_name(0) == "prompt 1 of the held-out list"
    assert unseen_name(len(held)) == "prompt 1 of the decoy list"


def test_decoys_follow_the_key_length_distribution() -> None:
    ks = KeySet.generate("len", 40, seed=5)
    template = get_template(ks.template)
    lengths = [len(template.render(k.text)[-1]["content"]) for k in ks.keys]
    decoys = select_decoys(lengths, 40, Csprng("s1", "decoys"))
    assert len({d.id for d in decoys}) == 40
    pool = decoy_pool()
    chosen = sorted(len(d.text) for d in decoys)
    # matched selection sits much closer to the key lengths than the pool at large
    gap = abs(statistics.median(chosen) - statistics.median(lengths))
    pool_gap = abs(statistics.median(len(p) for p in pool) - statistics.median(lengths))
    assert gap <= max(5.0, pool_gap / 3)
    assert decoy_by_id(decoys[0].id).text == decoys[0].text
    assert "chars=" in repr(decoys[0]) and decoys[0].text not in repr(decoys[0])


def test_decoy_selection_is_seeded_and_bounded() -> None:
    pool = [f"prompt number {i} " + "x" * (i % 50) for i in range(60)]
    a = select_decoys([30, 40], 10, Csprng("seed", "d"), pool)
    b = select_decoys([30, 40], 10, Csprng("seed", "d"), pool)
    c = select_decoys([30, 40], 10, Csprng("other", "d"), pool)
    assert a == b and a != c
    with pytest.raises(UserError, match="decoy pool has 60"):
        select_decoys([30], 61, Csprng("seed"), pool)


def test_control_keys_are_fresh_and_seeded() -> None:
    ks = KeySet.generate("c", 10, seed=1)
    controls = control_keys(ks, 10, seed=99)
    assert [c.id for c in controls] == [f"c{i:03d}" for i in range(10)]
    assert not {c.text for c in controls} & {k.text for k in ks.keys}
    assert [c.text for c in control_keys(ks, 10, seed=99)] == [c.text for c in controls]


def test_csprng_is_uniform_enough_and_deterministic() -> None:
    rng = Csprng("abc")
    draws = Counter(rng.randbelow(6) for _ in range(6000))
    assert set(draws) == set(range(6)) and min(draws.values()) > 850
    assert [Csprng("abc").u64() for _ in range(2)] == [Csprng("abc").u64()] * 2
    with pytest.raises(ValueError):
        Csprng("")


def test_spread_shuffle_keeps_every_prefix_balanced() -> None:
    items = [("key", i) for i in range(20)] + [("control", i) for i in range(20)] + \
        [("decoy", i) for i in range(60)]
    order = spread_shuffle(items, lambda it: it[0], Csprng("spread"))
    assert sorted(order) == sorted(items)
    for prefix in (10, 25, 50, 75):
        counts = Counter(cat for cat, _ in order[:prefix])
        assert abs(counts["key"] - prefix * 0.2) <= 1.5
        assert abs(counts["decoy"] - prefix * 0.6) <= 2
    assert order != spread_shuffle(items, lambda it: it[0], Csprng("spread2"))


def test_plan_counts_ratios_and_round_trip() -> None:
    ks = KeySet.generate("p", 10, seed=2)
    ep = EndpointConfig("ep", "compat:m", base_url="http://127.0.0.1:1/v1")
    settings = CampaignSettings(key_ids=("k001", "k002", "k003", "k004"), controls_per_key=0.5,
                                decoys_per_key=2, samples=3, temperatures=(0.0, 1.0),
                                system_prompt="Be brief.")
    plan = build_plan("a1", ep, ks, "keys/p.json", settings, seed="fixed")
    assert plan.counts() == {"key": 24, "control": 12, "decoy": 48}
    assert len({q.query_id for q in plan.queries}) == 84
    assert all(m[0] == {"role": "system", "content": "Be brief."} for m in plan.prompts.values())
    assert {q.prompt_id for q in plan.queries if q.category == "key"} == \
        {"k001", "k002", "k003", "k004"}
    again = Plan.from_dict(plan.to_dict())
    assert again.queries == plan.queries and again.prompts == plan.prompts
    assert build_plan("a1", ep, ks, "keys/p.json", settings, seed="fixed").queries == \
        plan.queries
    public = str(plan.public_dict())
    assert all(k.text not in public for k in ks.keys) and "fixed" not in public
    assert ks.keys[1].text not in repr(plan)


def test_plan_rejects_bad_settings() -> None:
    ks = KeySet.generate("p", 3, seed=2)
    ep = EndpointConfig("ep", "compat:m")
    with pytest.raises(UserError, match="no key"):
        build_plan("a", ep, ks, "k", CampaignSettings(key_ids=("k999",)))
    for bad in ({"samples": 0}, {"temperatures": (3.0,)}, {"max_queries": 0}, {"alpha": 1.5},
                {"key_rule": "most"}, {"decoys_per_key": -1}):
        with pytest.raises(UserError):
            CampaignSettings(**bad)
    with pytest.raises(UserError, match="concurrency"):
        EndpointConfig("ep", "compat:m", concurrency=0)
