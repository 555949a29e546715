"""The shipped digits DiT: checkpoints load and match their hashes, sampling through fastdiff.sample
gives finite images of the requested digits, and the `fastdiff demo` / `fastdiff sample` commands
work and refuse bad input with a message."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import fastdiff
from fastdiff.bench import digits as bench_digits
from fastdiff.cli import main
from fastdiff.models import digits as dd

#: 10 NFE, 100 samples (digits 0-9 ten times), DPM-Solver++(2M), each checkpoint's default guidance;
#: the shipped checkpoints score 0.99-1.0 at 10 NFE (200 samples), so a drop below this means a regression.
QUICK_ACCURACY = 0.9


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The model's batches are tiny: a second intra-op thread only adds synchronisation (and on a loaded
    machine makes each forward many times slower), as in `fastdiff demo`."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def scorer():
    pytest.importorskip("sklearn")
    return bench_digits.Scorer(seed=0)


@pytest.mark.parametrize("kind", dd.KINDS)
def test_checkpoint_loads_and_its_weights_match_the_recorded_hash(kind):
    model = fastdiff.models.digits_dit(kind)
    meta = dd.checkpoint_metadata(kind)
    assert isinstance(model, dd.DigitsDiT) and not model.training
    assert dd.weights_sha256(model.state_dict()) == meta["weights_sha256"]
    assert meta["kind"] == kind and meta["train_command"].startswith("python scripts/train_digits_dit.py")
    assert meta["scheduler"]["prediction_type"] == {"ddpm": "epsilon", "flow": "flow_prediction"}[kind]
    assert 1.0 <= meta["guidance_scale"] <= 10.0
    assert sum(p.numel() for p in model.parameters()) < 400_000  # "a few hundred thousand at most"
    assert dd.checkpoint_path(kind).stat().st_size < 4 * 2**20


def test_the_recorded_data_hash_is_that_of_sklearns_digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    d = load_digits()
    sha = hashlib.sha256(d.images.astype(np.uint8).tobytes() + d.target.astype(np.int64).tobytes()).hexdigest()
    for kind in dd.KINDS:
        assert dd.checkpoint_metadata(kind)["data_sha256"] == sha


def test_a_damaged_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    state, meta = dd.load_checkpoint(dd.checkpoint_path("ddpm"))
    state = dict(state)
    state["final.bias"] = state["final.bias"] + 1e-3
    path = tmp_path / "damaged.safetensors"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(RuntimeError, match="not to the recorded .*: the file is damaged"):
        dd.load_checkpoint(path)


def test_the_model_runs_on_fastdiffs_modules_and_trains_through_their_autograd():
    model = dd.DigitsDiT(dim=32, depth=2, heads=2)
    blocks = [m for m in model.modules() if isinstance(m, fastdiff.nn.DiTBlock)]
    assert len(blocks) == 2 and all(isinstance(b.attn1, fastdiff.nn.Attention) for b in blocks)
    # adaLN-Zero starts every gate and the output layer at zero, which zeroes most gradients: perturb them first
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.1)
    x = torch.randn(5, 1, 8, 8)
    out = model(x, torch.rand(5) * 1000, torch.tensor([0, 3, 9, 10, 1]))
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert blocks[0].attn1.to_q.weight.grad.abs().sum() > 0


def test_fitting_samplers_match_each_checkpoints_prediction_type():
    names = list(fastdiff.samplers.NAMED)
    ddpm, flow = dd.fitting_samplers("ddpm"), dd.fitting_samplers("flow")
    assert ddpm == [n for n in names if n not in ("lcm", "flow_euler", "ddim_inversion", "edm_euler", "ipndm",
                                                  "dpmpp_2m_inversion", "edm_dpmpp_2m", "tcd")]
    assert flow == ["dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "flow_euler", "sa_solver", "deis",
                    "dpmpp_2s", "dpmpp_3s"]


@pytest.mark.parametrize("kind,sampler", [("ddpm", "dpmpp_2m"), ("ddpm", "euler_ancestral"), ("flow", "flow_euler")])
def test_a_small_sample_is_finite_in_range_and_reproducible(kind, sampler):
    kw = dict(kind=kind, sampler=sampler, steps=4)
    a = fastdiff.models.sample_digits([0, 7, 7, 3], generator=torch.Generator().manual_seed(1), **kw)
    b = fastdiff.models.sample_digits([0, 7, 7, 3], generator=torch.Generator().manual_seed(1), **kw)
    assert a.shape == (4, 1, 8, 8) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert a.std() > 0.1  # not a blank image
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", dd.KINDS)
def test_quick_accuracy_at_10_nfe_on_100_samples(kind, scorer):
    labels = torch.arange(100) % 10
    images = fastdiff.models.sample_digits(labels, kind=kind, steps=10, generator=torch.Generator().manual_seed(0))
    assert scorer.accuracy(images, labels) >= QUICK_ACCURACY


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(labels=[3, 10]), "labels expected digits 0..9, got 10"),
        (dict(labels=[]), "labels is empty"),
        (dict(labels=[1.5]), "labels expected integers"),
        (dict(labels=[1], kind="vae"), "kind expected one of ddpm, flow, got 'vae'"),
        (dict(labels=[1], sampler="flow_euler"), "sampler expected one of ddpm, ddim"),
        (dict(labels=[1], kind="flow", sampler="ddim"), "for the flow checkpoint, got 'ddim'"),
        (dict(labels=[1], steps=0), "steps expected a positive integer, got 0"),
        (dict(labels=[1], guidance_scale=float("nan")), "guidance_scale expected a finite number"),
    ],
)
def test_sample_digits_rejects_bad_input_with_a_message(kwargs, message):
    labels = kwargs.pop("labels")
    with pytest.raises(ValueError, match="fastdiff.models") as e:
        fastdiff.models.sample_digits(labels, **kwargs)
    assert message in str(e.value)


def test_fastdiff_and_diffusers_land_on_the_same_images_from_the_same_noise(scorer):
    pytest.importorskip("diffusers")
    labels, noise = torch.arange(20) % 10, torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, na = bench_digits.run_fastdiff("ddpm", "dpmpp_2m", 6, labels, noise, 2.0, 0)
        b, nb = bench_digits.run_diffusers("ddpm", "dpmpp_2m", 6, labels, noise, 2.0, 0)
    assert na == nb == 6
    assert (a - b).abs().max() < 1e-3


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    assert abs(bench_digits.frechet(a, a)) < 1e-8
    assert bench_digits.frechet(a, a + 1.0) == pytest.approx(5.0, rel=1e-6)  # the covariances cancel


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def test_demo_with_no_arguments_writes_a_10x10_grid_and_says_what_it_did(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", "4"]) == 0
    img = Image.open(tmp_path / "fastdiff-demo.png")
    assert img.size == (10 * 70 + 6, 10 * 70 + 6)  # 8x8 digits upscaled 8x, 6-pixel gaps
    out = capsys.readouterr().out
    for text in ("DiT", "load the checkpoint", "sample 100 digits", "dpmpp_2m, 4 steps, guidance", "ms/step",
                 "fastdiff-demo.png", "fastdiff demo --mixture"):
        assert text in out


def test_sample_writes_the_requested_number_of_images(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["sample", "--class", "7", "--sampler", "ddim", "--steps", "3", "--guidance", "3", "--n", "5",
                 "--out", str(out), "--no-progress"]) == 0
    assert Image.open(out).size == (5 * 70 + 6, 70 + 6)
    assert "sampled 5 images (digit 7) with ddim, 3 steps, guidance 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--class", "12"], "argument --class: expected a digit 0 to 9, got '12'"),
        (["--class", "seven"], "argument --class: expected a digit 0 to 9, got 'seven'"),
        (["--sampler", "dpm"], "argument --sampler: expected one of ddpm, ddim, euler"),
        (["--sampler", "flow_euler"], "(flow_euler fits --kind flow)"),
        (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
        (["--steps", "1001"], "argument --steps: expected at most 1000"),
        (["--guidance", "inf"], "argument --guidance: expected a finite number"),
        (["--n", "-1"], "argument --n: expected a positive integer"),
        (["--out", "x.jpg"], "argument --out: expected a path ending in .png"),
        (["--kind", "gan"], "argument --kind: invalid choice: 'gan'"),
    ],
)
def test_sample_rejects_bad_arguments_with_a_message(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["sample", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_demo_samples_option_belongs_to_the_mixture(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--samples", "10"])
    assert e.value.code == 2
    assert "argument --samples: applies to --mixture only" in capsys.readouterr().err


def test_bench_digits_runs_and_writes_its_report(tmp_path, capsys):
    pytest.importorskip("sklearn")
    rc = bench_digits.main(["--kinds", "flow", "--samplers", "flow_euler", "--nfe", "4", "--n", "20",
                            "--implementations", "fastdiff", "--out", str(tmp_path)])
    assert rc == 0
    [js] = tmp_path.glob("*-digits.json")
    data = json.loads(js.read_text())
    [row] = data["rows"]
    assert (row["kind"], row["sampler"], row["nfe"], row["implementation"]) == ("flow", "flow_euler", 4, "fastdiff")
    assert 0 <= row["accuracy"] <= 1 and row["fd"] > 0
    assert "## `flow` checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("kind", dd.KINDS)
def test_every_fitting_sampler_draws_the_requested_digits(kind, scorer):
    # A sampler listed as fitting must actually work with the checkpoint (a schedule or timestep
    # convention it does not share gives noise, not a slightly worse score).
    labels = torch.arange(30) % 10
    for name in dd.fitting_samplers(kind):
        images = fastdiff.models.sample_digits(labels, kind=kind, sampler=name, steps=10,
                                               generator=torch.Generator().manual_seed(0))
        assert scorer.accuracy(images, labels) >= 0.8, name
