"""The shared service's engine, in-process with the real tiny model: batching, schedulers,
persistent contexts, swap and recompute, shared prefixes."""

import time
from dataclasses import replace

import torch

from agents.llm.generate import generate
from agents.llm.weights import random_model
from agents.modelservice.scheduler import RequestState, ServiceRequest
from agents.modelservice.serving_engine import ServingEngine
from fleet.records import ContextPolicy, SchedulerPolicy, ServiceOptions
from fleet.shapes import ModelArgs

MODEL = random_model(replace(ModelArgs.from_name("tiny"), tie_embeddings=False), torch.float32, 0)


def req(rid, prompt, n, **kw):
    out = []
    r = ServiceRequest(rid, kw.pop("app", rid), list(prompt), n, **kw)
    r.sink = lambda item: out.append(item) if isinstance(item, int) else None
    r.tokens = out
    return r


def drain(engine, limit=10_000):
    for _ in range(limit):
        if not engine.active and not engine._incoming:
            return
        engine.active.extend(engine._incoming)
        engine._incoming.clear()
        engine.step()
        if engine.contexts.swapping_out or engine.contexts.restoring:
            time.sleep(0.001)  # a context is being written or read on its own thread
    raise AssertionError("engine did not drain")


def test_continuous_batching_gives_each_request_its_own_greedy_tokens(tmp_path):
    engine = ServingEngine(MODEL, ServiceOptions(max_batch_size=4, prefix_cache=False), tmp_path)
    prompts = [list(range(1, 9)), list(range(50, 80)), [7], list(range(100, 117))]
    reqs = [req(f"r{i}", p, 6 + i) for i, p in enumerate(prompts)]
    for r in reqs[:2]:
        engine.submit(r)
    engine.active.extend(engine._incoming)
    engine._incoming.clear()
    engine.step()  # two prefills in one step
    for r in reqs[2:]:
        engine.submit(r)  # join between decode steps
    drain(engine)
    for r, p in zip(reqs, prompts):
        assert r.tokens == generate(MODEL, p, r.max_new_tokens), r.request_id
        assert r.state == RequestState.FINISHED and len(r.slices) == 1
    assert engine.stats().max_batch_size == 4 and engine.stats().mean_batch_size > 1


def test_priority_preempts_background_and_records_every_slice(tmp_path):
    engine = ServingEngine(
        MODEL, ServiceOptions(scheduler=SchedulerPolicy.PRIORITY, max_batch_size=4), tmp_path
    )
    bg = req("bg", range(1, 30), 20)
    engine.submit(bg)
    engine.active.extend(engine._incoming)
    engine._incoming.clear()
    for _ in range(5):
        engine.step()
    fg = req("fg", range(40, 50), 5, foreground=True)
    engine.submit(fg)
    drain(engine)
    assert fg.slices and len(fg.slices) == 1
    assert len(bg.slices) == 2  # preempted once, resumed once; the last slice is recorded too
    assert (
        bg.slices[0].end_ns <= fg.slices[0].start_ns
        and fg.slices[0].end_ns <= bg.slices[1].start_ns
    )
    assert sum(s.output_tokens for s in bg.slices) == 20
    assert bg.tokens == generate(MODEL, list(range(1, 30)), 20)  # preemption changes no token
    assert engine.num_preemptions == 1


def test_round_robin_with_one_slot_rotates_by_quantum(tmp_path):
    engine = ServingEngine(
        MODEL,
        ServiceOptions(scheduler=SchedulerPolicy.ROUND_ROBIN, quantum_tokens=3, max_batch_size=1),
        tmp_path,
    )
    a, b = req("a", range(1, 5), 7), req("b", range(9, 14), 7)
    engine.submit(a)
    engine.submit(b)
    drain(engine)
    assert engine.stats().max_batch_size == 1
    assert len(a.slices) == 3 and len(b.slices) == 3  # 7 tokens in slices of <= 3 steps
    assert a.tokens == generate(MODEL, list(range(1, 5)), 7)


def test_round_robin_batches_several_apps_and_shares_scarce_slots_in_turn(tmp_path):
    engine = ServingEngine(
        MODEL,
        ServiceOptions(scheduler=SchedulerPolicy.ROUND_ROBIN, quantum_tokens=2, max_batch_size=2),
        tmp_path,
    )
    # app x sends three requests, y and z one each: one slot per app per round, in turn
    reqs = [req(f"x{i}", range(1 + i, 6 + i), 6, app="x") for i in range(3)]
    reqs += [req("y0", range(20, 25), 6, app="y"), req("z0", range(30, 35), 6, app="z")]
    for r in reqs:
        engine.submit(r)
    engine.active.extend(engine._incoming)
    engine._incoming.clear()
    batches = []
    while engine.active:
        batches.append(sorted(r.app for r in engine.scheduler.schedule(list(engine.active))))
        engine.scheduler._steps -= 1  # peeked: let the step below count it
        engine.step()
    assert engine.stats().max_batch_size == 2  # several apps in one forward pass
    assert batches[0] == ["x", "y"]  # one of each app first, not x's whole queue
    assert ["x", "z"] in batches or ["y", "z"] in batches  # z got its turn in the rotation
    for r in reqs:
        assert r.tokens == generate(MODEL, list(r.prompt), 6)  # batching changes no token


def test_priority_aging_bounds_a_background_wait(tmp_path):
    """Strict priority starves a background request while foreground work keeps coming; with
    aging it is promoted after waiting ``priority_aging_s`` and runs beside the foreground."""
    import time

    def run(aging_s):
        engine = ServingEngine(
            MODEL,
            ServiceOptions(
                scheduler=SchedulerPolicy.PRIORITY, max_batch_size=2, priority_aging_s=aging_s
            ),
            tmp_path,
        )
        bg = req("bg", range(1, 9), 4)
        engine.submit(bg)
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 1.0:  # a steady stream of two foreground requests
            while sum(r.foreground for r in engine.active + engine._incoming) < 2:
                engine.submit(req(f"fg{i}", range(40, 48), 30, foreground=True))
                i += 1
            engine.active.extend(engine._incoming)
            engine._incoming.clear()
            engine.step()
        return bg, engine

    strict, _ = run(0.0)
    assert not strict.slices  # starved for the whole second
    aged, engine = run(0.2)
    assert aged.slices and aged.promoted and engine.stats().num_promotions == 1
    waited_s = (aged.slices[0].start_ns - aged.arrived_ns) / 1e9
    assert 0.2 <= waited_s < 0.7  # promoted after 0.2 s, then the next free slot


def _multi_turn(engine, turns=3):
    history, outs = [], []
    for t in range(turns):
        prompt = history + list(range(10 * t + 1, 10 * t + 9))
        r = req(f"chat/{t}", prompt, 6, app="chat", session="chat")
        engine.submit(r)
        drain(engine)
        # another app's long context pushes chat out of the KV budget between turns
        other = req(f"other/{t}", range(100, 160), 2, app="other", session=f"other{t}")
        engine.submit(other)
        drain(engine)
        outs.append(r)
        history = prompt + r.tokens
    return outs


def test_persistent_context_is_swapped_out_and_restored_exactly(tmp_path):
    for policy in (ContextPolicy.SWAP, ContextPolicy.RECOMPUTE):
        engine = ServingEngine(
            MODEL,
            ServiceOptions(persistent_contexts=True, context_policy=policy, kv_budget_bytes=1),
            tmp_path / policy.value,
        )
        outs = _multi_turn(engine)
        history = []
        for t, r in enumerate(outs):
            prompt = history + list(range(10 * t + 1, 10 * t + 9))
            assert r.tokens == generate(MODEL, prompt, 6), (policy, t)
            history = prompt + r.tokens
            if t:
                assert r.context_restore == policy.value
                assert r.context_switch_s > 0 and r.context_switch_bytes > 0
                if policy is ContextPolicy.SWAP:
                    # all of the previous turn is read back but its last sampled token
                    assert r.cached_prompt_tokens == len(prompt) - 8 - 1
                else:  # recomputed by its own chunked prefill: nothing came from a cache
                    assert r.cached_prompt_tokens == 0 and len(r.slices) == 1
        stats = engine.stats()
        key = "swap_ins" if policy is ContextPolicy.SWAP else "recomputes"
        assert getattr(stats, key) == 2


def test_shared_prefix_is_prefilled_once_per_app(tmp_path):
    engine = ServingEngine(MODEL, ServiceOptions(prefix_cache=True), tmp_path)
    system = list(range(200, 232))
    rs = [
        req(f"n{i}", system + [i + 1, i + 2, i + 3], 4, app="notif", shared_prefix_tokens=32)
        for i in range(3)
    ]
    for r in rs:
        engine.submit(r)
        drain(engine)
    assert [r.cached_prompt_tokens for r in rs] == [0, 32, 32]
    for r in rs:
        assert r.tokens == generate(MODEL, r.prompt, 4)
    assert engine.stats().prefix_hits == 2


def test_a_failing_step_fails_every_request_instead_of_hanging(tmp_path):
    import threading

    engine = ServingEngine(MODEL, ServiceOptions(), tmp_path)
    good, bad = req("good", range(1, 9), 50), req("bad", [10_000], 4)  # id beyond the vocab
    done = []
    for r in (good, bad):
        r.sink = (
            lambda item, done=done: done.append(item) if isinstance(item, ServiceRequest) else None
        )
        engine.submit(r)
    stop = threading.Event()
    worker = threading.Thread(target=engine.run_forever, args=(stop,))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive() and stop.is_set()
    assert {r.request_id for r in done} == {"good", "bad"}
    assert all(r.state == RequestState.FAILED for r in done)
    assert "engine step failed" in engine.error


def test_a_memory_budget_holds_admissions_back_instead_of_being_exceeded(tmp_path):
    """SLMaaS under the one memory rule: requests whose KV would not fit wait for KV to free."""
    per_request = 64 * 2 * 2 * 2 * 16 * 4  # a 64-position context of the tiny model, K and V
    engine = ServingEngine(
        MODEL,
        ServiceOptions(max_batch_size=4, prefix_cache=False),
        tmp_path,
        kv_budget_bytes=2 * per_request,  # room for two contexts
    )
    reqs = [req(f"r{i}", range(1 + i, 21 + i), 10) for i in range(4)]
    for r in reqs:
        engine.submit(r)
    peak = 0
    while engine.active or engine._incoming:
        engine.active.extend(engine._incoming)
        engine._incoming.clear()
        engine.step()
        peak = max(peak, engine.stats().kv_held_bytes)
    assert peak <= 2 * per_request
    stats = engine.stats()
    assert stats.admission_waits == 2 and stats.max_batch_size == 2  # two waited their turn
    for r in reqs:
        assert r.state == RequestState.FINISHED
        assert r.tokens == generate(MODEL, list(r.prompt), 10)


def test_a_background_recompute_does_not_stall_the_foreground_for_more_than_a_chunk(tmp_path):
    """Context switches off the critical path: a dropped background context is rebuilt by its own
    chunked prefill, so under priority a foreground request runs between the chunks."""
    engine = ServingEngine(
        MODEL,
        ServiceOptions(
            scheduler=SchedulerPolicy.PRIORITY,
            persistent_contexts=True,
            context_policy=ContextPolicy.RECOMPUTE,
            prefill_chunk_tokens=16,
        ),
        tmp_path,
    )
    first = req("bg/0", range(1, 200), 2, app="bg", session="bg")
    engine.submit(first)
    drain(engine)
    engine.contexts.sessions["bg"].drop()  # evicted while idle, to be recomputed
    bg = req("bg/1", list(first.prompt) + first.tokens + [7, 8], 2, app="bg", session="bg")
    engine.submit(bg)
    engine.active.extend(engine._incoming)
    engine._incoming.clear()
    engine.step()  # the recompute starts: one 16-token chunk
    fg = req("fg", range(30, 40), 3, foreground=True)
    engine.submit(fg)
    drain(engine)
    assert bg.context_restore == "recompute" and bg.context_switch_s > 0
    assert bg.cached_prompt_tokens == 0 and engine.stats().recomputes == 1
    assert fg.slices[0].start_ns < bg.slices[-1].start_ns  # it ran before the rebuild ended
    assert len(bg.slices) == 2  # preempted between chunks, resumed after the foreground
    assert bg.tokens == generate(MODEL, list(bg.prompt), 2)
