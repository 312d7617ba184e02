"""The parallel KV-cache sampler: training layout, cache equivalence, feed modes, batch independence,
and a learning check (overfit a handful of pairs, then sample them back)."""
from __future__ import annotations

import pytest
import torch

from test_ar import PRESETS, PROMPTS, build_model, random_latents, single_thread  # noqa: F401 (autouse)
from vgt.ar.model import tokens_of
from vgt.ar.sampling import image_generator, sample_latents, teacher_forced_conditions
from vgt.config import SampleConfig

TOL = dict(atol=1e-5, rtol=1e-5)  # README policy: fp32 CPU, different batch shapes / kernels


@pytest.fixture(scope="module", params=PRESETS)
def model(request):
    return build_model(request.param)


def orders_for(n: int, seed: int = 0) -> torch.Tensor:
    return torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


# The settings these tests sample with unless they say otherwise (the sampler itself has none).
BASE = SampleConfig(guidance_scale=3.0, num_steps=3)


def sample(model, prompts=PROMPTS, seeds=None, use_cache=True, stats=None, **kw):
    seeds = range(len(prompts)) if seeds is None else seeds
    return sample_latents(model, prompts, [image_generator(7, i) for i in seeds], (4, 4),
                          **BASE.resolve(**kw).as_kwargs(), use_cache=use_cache, stats=stats)


@pytest.mark.parametrize("feed_mode", ["pairs", "parity"])
def test_teacher_forced_sampler_at_one_token_matches_training(model, feed_mode):
    lat, orders = random_latents(3), orders_for(3)
    with torch.no_grad():
        embeds, mask = model.embed_prompts(model.prompt_texts(PROMPTS))
        train = model.training_conditions(embeds, mask, tokens_of(lat), (4, 4), orders)
        sampler = teacher_forced_conditions(model, PROMPTS, lat, orders, parallel_tokens=1, feed_mode=feed_mode)
    assert torch.allclose(sampler, train, **TOL)


def test_pairs_mode_cache_is_the_training_layout(model):
    """With 4 tokens per step the first query of every group sees exactly its training context in
    "pairs" mode; "parity" keeps stale latent-less queries in the cache, so it does not."""
    lat, orders = random_latents(3), orders_for(3)
    firsts = orders[:, ::4]
    with torch.no_grad():
        embeds, mask = model.embed_prompts(model.prompt_texts(PROMPTS))
        train = model.training_conditions(embeds, mask, tokens_of(lat), (4, 4), orders)
        pairs, parity = (teacher_forced_conditions(model, PROMPTS, lat, orders, 4, mode) for mode in ("pairs", "parity"))
    pick = lambda c: torch.stack([c[i, firsts[i]] for i in range(3)])  # noqa: E731
    assert torch.allclose(pick(pairs), pick(train), **TOL)
    assert not torch.allclose(pick(parity)[:, 1:], pick(train)[:, 1:], atol=1e-3)


@pytest.mark.parametrize("feed_mode", ["pairs", "parity"])
@pytest.mark.parametrize("parallel_tokens", [1, 4, 16])
def test_kv_cache_equals_full_recomputation(model, feed_mode, parallel_tokens):
    kw = dict(parallel_tokens=parallel_tokens, feed_mode=feed_mode)
    cached, full = sample(model, **kw), sample(model, use_cache=False, **kw)
    assert cached.shape == (3, 32, 4, 4)
    assert torch.allclose(cached, full, **TOL)


def test_feed_modes_agree_at_one_token_and_differ_in_parallel(model):
    assert torch.equal(sample(model, parallel_tokens=1), sample(model, parallel_tokens=1, feed_mode="parity"))
    assert not torch.allclose(sample(model, parallel_tokens=4), sample(model, parallel_tokens=4, feed_mode="parity"),
                              atol=1e-3)


def test_llm_tokens_fed_per_mode():
    model = build_model("tiny")
    prompt_len = model.embed_prompts(model.prompt_texts(PROMPTS[:1]))[1].shape[1]  # text + <img>
    counts = {}
    for mode in ("pairs", "parity"):
        for p in (1, 4, 16):
            stats = {}
            sample(model, PROMPTS[:1], parallel_tokens=p, feed_mode=mode, stats=stats)
            counts[mode, p] = (stats["llm_forwards"], stats["llm_tokens"])
    assert counts["pairs", 1] == counts["parity", 1] == (16, prompt_len + 1 + 15 * 2)
    assert counts["pairs", 4] == (4, prompt_len + 4 + 3 * (7 + 4))  # (2P - 1) re-fed + P queries
    assert counts["parity", 4] == (4, prompt_len + 4 + 3 * (8 + 4))  # 2P re-fed + P queries
    assert counts["pairs", 16] == counts["parity", 16] == (1, prompt_len + 16)


def test_prompt_alone_and_inside_a_batch_agree(model):
    """Image i's randomness is its own generator: a prompt sampled alone and between a longer and a
    shorter prompt (padding, other orders, CFG rows) gives the same latents (tolerance: batch shapes)."""
    alone = sample(model, [PROMPTS[0]], seeds=[5], parallel_tokens=4)
    batch = sample(model, [PROMPTS[1], PROMPTS[0], PROMPTS[2]], seeds=[9, 5, 3], parallel_tokens=4)
    assert torch.allclose(batch[1:2], alone, **TOL)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)
    assert torch.equal(sample(model, parallel_tokens=4), sample(model, parallel_tokens=4))


def test_raster_order_ode_and_constant_schedule_run_deterministically(model):
    kw = dict(order="raster", sampler="ode", cfg_schedule="constant", parallel_tokens=4)
    a = sample(model, **kw)
    assert torch.equal(a, sample(model, **kw))
    assert torch.allclose(a.pow(2).mean(1), torch.ones(3, 4, 4), atol=1e-4)  # LayerNorm-ed per token


def test_bad_sampler_arguments_are_clear_errors():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="parallel_tokens"):
        sample(model, parallel_tokens=17)
    with pytest.raises(ValueError, match="feed mode"):
        sample(model, feed_mode="both")
    with pytest.raises(ValueError, match="generators"):
        sample_latents(model, PROMPTS, [image_generator(0, 0)], (4, 4), **BASE.as_kwargs())


def test_resolve_fills_every_unset_setting_from_the_config_and_keeps_explicit_ones():
    folder = SampleConfig(guidance_scale=2.5, cfg_schedule="constant", num_steps=7, parallel_tokens=9,
                          order="raster", sampler="ode", feed_mode="parity", temperature=0.5)
    names = list(folder.as_kwargs())
    assert folder.resolve() == folder and folder.resolve() is not folder
    assert folder.resolve(**dict.fromkeys(names)) == folder  # None everywhere: all from the config
    explicit = dict(guidance_scale=1.0, cfg_schedule="linear", num_steps=2, parallel_tokens=3, order="random",
                    sampler="sde", feed_mode="pairs", temperature=1.0)
    assert set(explicit) == set(names)  # the test covers every setting
    assert folder.resolve(**explicit).as_kwargs() == explicit
    for name in names:  # one explicit value, the rest from the config
        assert folder.resolve(**{name: explicit[name]}).as_kwargs() == {**folder.as_kwargs(), name: explicit[name]}
    assert folder.resolve(num_tokens=4).parallel_tokens == 4  # capped at the latent tokens
    assert folder.resolve(num_tokens=16, parallel_tokens=20).parallel_tokens == 16
    assert folder.resolve(num_tokens=16).parallel_tokens == 9
    assert folder.num_steps == 7 and folder.parallel_tokens == 9  # resolve never changes the config
    with pytest.raises(TypeError, match="guidance"):
        folder.resolve(guidance=3.0)


def test_the_sampler_has_no_defaults_of_its_own():
    import inspect

    model = build_model("tiny")
    params = inspect.signature(sample_latents).parameters
    for name in SampleConfig().as_kwargs():
        assert params[name].default is inspect.Parameter.empty, name
    for name in ("parallel_tokens", "feed_mode"):
        assert inspect.signature(teacher_forced_conditions).parameters[name].default is inspect.Parameter.empty
    gens = [image_generator(0, i) for i in range(3)]
    with pytest.raises(TypeError, match="missing"):
        sample_latents(model, PROMPTS, gens, (4, 4))
    for name in SampleConfig().as_kwargs():  # each setting left unset (None) is refused by name
        with pytest.raises(TypeError, match=name):
            sample_latents(model, PROMPTS, gens, (4, 4), **{**BASE.as_kwargs(), name: None})


CAPTIONS = ["a red apple", "a small dog", "two cats on a sofa", "a lighthouse at sunset"]


@pytest.mark.parametrize("preset", PRESETS)
def test_overfitting_a_few_pairs_learns_them(preset):
    """200 AdamW steps on 4 fixed (caption, latent) pairs: the flow loss (mean of 4 fixed draws) falls
    below 25% of its start, and each caption's samples land nearest to its own latent. Control: the
    same samples scored against a shuffled caption->latent assignment match none."""
    model = build_model(preset, ["ar.cfg_dropout=0.0"], random_head=False)
    targets = random_latents(4, seed=11)

    def eval_loss():
        with torch.no_grad():
            return sum(model(CAPTIONS, latents=targets, generator=torch.Generator().manual_seed(100 + i))["loss"]
                       for i in range(4)).item() / 4

    start = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):
        loss = model(CAPTIONS, latents=targets, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert eval_loss() < 0.25 * start
    z = sample_latents(model, CAPTIONS, [image_generator(0, i) for i in range(4)], (4, 4),
                       **SampleConfig(guidance_scale=1.0, num_steps=8, parallel_tokens=1).as_kwargs())
    dist = torch.cdist(z.flatten(1), targets.flatten(1))
    assert torch.equal(dist.argmin(1), torch.arange(4))
    shuffled = torch.tensor([1, 2, 3, 0])
    assert not (dist.argmin(1) == shuffled).any()
