"""fastdiff.bench.sampler_accuracy: both implementations see the same exact model, the measures mean
what they say, and the report carries the issue's claims."""

import json

import pytest
import torch

from fastdiff.bench import sampler_accuracy as bench
from fastdiff.samplers import NAMED, make_sampler

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # a few hundred 2-D points: threads only add synchronisation
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("config,name", [(c, n) for c in bench.CONFIGS for n in bench.CONFIGS[c]])
def test_the_diffusers_loop_feeds_the_model_the_noise_levels_of_fastdiffs_plan(config, name):
    sampler = make_sampler(name, **bench.CONFIGS[config][name])
    plan = sampler.plan(bench.steps_for(name, 10), torch.device("cpu"))
    sched = getattr(diffusers, sampler.scheduler_name).from_config(sampler.config)
    sched.set_timesteps(bench.steps_for(name, 10))
    if sampler.scheduler_name in bench.MIDPOINT:
        # the model's level comes from its time input: both loops give the same time inputs, and at the
        # first stages (where the plan's levels are the state's own) it is the plan's level
        torch.testing.assert_close(plan.timesteps.double(), sched.timesteps.double(), rtol=1e-5, atol=1e-3)
        first = range(0, len(plan), 2)
        torch.testing.assert_close(torch.tensor([bench.midpoint_level(sampler, plan.timesteps[j]) for j in first], dtype=torch.float64),
                                   torch.tensor([plan.levels[j] for j in first], dtype=torch.float64), rtol=1e-5, atol=1e-6)
        return
    got = [bench.diffusers_level(sched, i, t) for i, t in enumerate(sched.timesteps)]
    assert len(got) == len(plan)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(plan.levels[:-1], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_every_named_sampler_is_measured_on_the_sd_grid():
    assert set(bench.CONFIGS["sd"]) == set(NAMED) - bench.NOT_MEASURED
    assert bench.steps_for("heun", 10) == 5 and bench.steps_for("dpm2", 10) == 5 and bench.steps_for("dpmpp_2m", 10) == 10


def test_ode_error_is_zero_for_the_reference_itself_and_falls_with_nfe():
    mix = bench.ring()
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    sampler = make_sampler("dpmpp_2m", **bench.CONFIGS["karras"]["dpmpp_2m"])
    ref = bench.Reference(mix, 60)
    errs = []
    for nfe in (10, 20):
        plan = sampler.plan(nfe, noise.device)
        truth = ref(noise * plan.init_scale, plan.levels[0], plan.levels[-1])
        out, used = bench.run_fastdiff(mix.to(dtype=torch.float32), sampler, nfe, noise, 1)
        assert used == nfe
        errs.append(bench.rms(out, truth))
        assert bench.rms(truth, truth) == 0.0
    assert errs[1] < errs[0] / 2  # second order: about 4x at twice the NFE
    assert len(ref.solutions) == 1  # both runs start and end at the same levels: one solve


@pytest.fixture(scope="module")
def small_result():
    result = bench.run(n=256, seed=0, configs=["sd", "karras"], samplers=["ddim", "ddpm", "euler", "dpmpp_2m", "unipc"],
                       nfes=[5, 10], reference_steps=60, implementations=["fastdiff", "diffusers"])
    result.update(n=256, reference_steps=60)
    return result


def test_fastdiff_and_diffusers_agree_run_for_run(small_result):
    rows = small_result["rows"]
    for f in (r for r in rows if r["implementation"] == "fastdiff"):
        d = bench._row(small_result, f["config"], f["sampler"], "diffusers", f["target_nfe"])
        assert d["nfe"] == f["nfe"] and f["finite"] and d["finite"]
        if f["ode_error"] is not None:
            assert f["ode_error"] == pytest.approx(d["ode_error"], rel=1e-3)
        assert f["sliced_w1"] == pytest.approx(d["sliced_w1"], abs=small_result["floor_sliced_w1"])
    assert all(r["ode_error"] is None for r in rows if r["sampler"] == "ddpm")  # stochastic: distance only


def test_report_has_both_grids_both_columns_and_the_checks(small_result):
    md = bench.markdown(small_result)
    assert "## Grid `sd`" in md and "## Grid `karras`" in md
    assert "| dpmpp_2m | fastdiff |" in md and "| dpmpp_2m | diffusers |" in md
    checks = bench.checks(small_result)
    texts = [t for t, _ in checks]
    assert any(t.startswith("sd / ddim: fastdiff no worse") for t in texts)
    assert any(t.startswith("karras / unipc at 10 NFE") for t in texts)
    assert all(ok for _, ok in checks), [t for t, ok in checks if not ok]
    assert md.count("- [x]") == len(checks)


def test_a_check_fails_when_fastdiff_is_worse():
    row = dict(config="sd", sampler="ddim", target_nfe=10, nfe=10, ode_error=0.10, sliced_w1=0.2, finite=True)
    worse = {"floor_sliced_w1": 0.01, "rows": [dict(row, implementation="fastdiff", ode_error=0.11), dict(row, implementation="diffusers")]}
    [(text, ok)] = bench.checks(worse)
    assert not ok and "worse at [10]" in text


def test_command_writes_json_markdown_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    status = bench.main(["--n", "64", "--nfe", "10", "--samplers", "ddim,euler,dpmpp_2m", "--reference-steps", "20", "--out", str(tmp_path)])
    assert status == 0
    stems = {p.suffix: p for p in tmp_path.iterdir()}
    assert set(stems) == {".json", ".md", ".png"}
    data = json.loads(stems[".json"].read_text())
    assert data["n"] == 64 and data["diffusers"] == diffusers.__version__ and data["rows"]
    assert stems[".png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,match", [(["--samplers", "plms"], "--samplers"), (["--configs", "exponential"], "--configs"),
                                        (["--implementations", "k-diffusion"], "--implementations")])
def test_bad_arguments_name_the_option(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and match in capsys.readouterr().err


def test_edm_ipndm_inversion_and_sa_solver_are_measured_as_diffusers_runs_them():
    """EDM-Euler's model is the exact network of its preconditioning, IPNDM's the exact v-prediction on
    its own levels, inversion starts from exact data noised to its first level; each agrees with
    diffusers run for run, and the deterministic ones' ODE error falls with NFE."""
    names = ["edm_euler", "ipndm", "ddim_inversion", "sa_solver"]
    result = bench.run(n=256, seed=0, configs=["sd"], samplers=names, nfes=[5, 10], reference_steps=60,
                       implementations=["fastdiff", "diffusers"])
    for name in names:
        f5, f10 = (bench._row(result, "sd", name, "fastdiff", n) for n in (5, 10))
        for f in (f5, f10):
            d = bench._row(result, "sd", name, "diffusers", f["target_nfe"])
            assert f["finite"] and d["finite"] and f["nfe"] == d["nfe"]
            if name == "sa_solver":
                assert f["ode_error"] is None  # stochastic by default (tau = 1 on timesteps 200..800)
                assert f["sliced_w1"] == pytest.approx(d["sliced_w1"], rel=1e-3)  # the same noise draws
            else:
                assert f["ode_error"] == pytest.approx(d["ode_error"], rel=1e-3)
        if name != "sa_solver":
            assert f10["ode_error"] < f5["ode_error"] * 0.8
