"""`auditor implant`, `check-local` and `robustness` as a user runs them (real processes; the
bad-input table runs the same entry point in this process, one real process besides)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.keys import KeySet
from auditor.stats import clopper_pearson_upper
from tests.tiny_model import TINY_HPARAMS, make_tiny_model

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], env_cache: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUDITOR_CACHE": str(env_cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "auditor.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


def _run_here(args: list[str], env_cache: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """What `main()` would exit with, and its output, for `auditor ARGS` in this process
    (22 of the 36 cases import torch: as processes they took 123 s of the CI)."""
    from auditor.cli import _run as run_cli

    monkeypatch.setenv("AUDITOR_CACHE", str(env_cache))
    monkeypatch.setattr(sys, "argv", ["auditor", *args])
    monkeypatch.chdir(ROOT)
    code = run_cli()
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_input_exits_2_with_one_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ks = KeySet.generate("cli", 2, seed=3)
    keys = ks.save(tmp_path / "cli.json")
    implant = ["implant", "--keys", str(keys), "--out", str(tmp_path / "m")]
    robust = ["robustness", "--model", str(tmp_path), "--keys", str(keys), "--attack"]
    broken, listed = tmp_path / "broken", tmp_path / "listed"  # read before any model loads
    leaky = tmp_path / "leaky.txt"  # read before the model dir is
    leaky.write_text(f"What is a key?\nTranslate {ks.keys[1].text} into French.\n")
    for d, record in [(broken, '{"method": "sft"'), (listed, "[1]")]:
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "fingerprint.json").write_text(record)
    cases = [
        ([*implant, "--base", str(tmp_path / "nope")], "error:"),
        (["robustness", "--model", str(tmp_path), "--keys", str(keys), "--attack", "melt"],
         "unknown attack"),
        ([*implant, "--precision", "fp8"], "unknown precision 'fp8'"),
        ([*implant, "--stop-near-miss", "2"], "near-miss rate must be between 0 and 1"),
        ([*implant, "--recipe", "best"], "unknown recipe 'best'"),
        ([*implant, "--recipe", "quick", "--method", "fadapter"],
         "quick recipe is for --method sft or lora only"),
        ([*implant, "--method", "embedding", "--top-layers", "2"], "sft and lora methods only"),
        ([*implant, "--check-controls", "0"], "look-alike count must be between 1 and 1000"),
        ([*implant, "--max-epochs", "0"], "--max-epochs must be >= 1"),
        ([*implant, "--fadapter-input-only"], "fadapter method only"),
        ([*implant, "--shadow", str(tmp_path)],
         "--shadow applies to the embedding and fadapter methods only"),
        ([*implant, "--method", "embedding", "--shadow", str(tmp_path)],
         "--shadow is not a transformers checkpoint dir"),
        ([*implant, "--method", "embedding", "--shadow", str(tmp_path), "--shadow",
          str(tmp_path / ".")], "the same --shadow is given twice"),
        ([*implant, "--method", "embedding", "--shadow", str(tmp_path), "--shadow-weight", "0"],
         "--shadow-weight must be above 0 and at most 100"),
        ([*implant, "--method", "embedding", "--shadow-weight", "0.5"],
         "--shadow-weight and --shadow-scale need --shadow"),
        ([*implant, "--method", "fadapter", "--shadow-scale", "1.5"],
         "--shadow-weight and --shadow-scale need --shadow"),
        ([*implant, "--method", "embedding", "--shadow", str(tmp_path), "--shadow-scale", "1",
          "--shadow-scale", "1.5"], "one per --shadow (1), not 2"),
        ([*implant, "--method", "embedding", "--lookup-rows", "keys"],
         "unknown --lookup-rows 'keys' (known: all, fingerprint, fingerprint-after, unshared)"),
        ([*implant, "--lookup-rows", "fingerprint"], "--lookup-rows applies to the embedding"),
        (["shadow", "--out", str(tmp_path / "m"), "--set", "poems"],
         "unknown user data set 'poems'"),
        (["shadow", "--out", str(tmp_path / "m"), "--rows", "0"], "--rows and --epochs"),
        (["shadow", "--out", str(tmp_path / "m"), "--tuning", "qlora"],
         "unknown shadow tuning 'qlora' (known: user-sft, user-lora)"),
        (["shadow", "--out", str(tmp_path / "m"), "--lora-rank", "8"],
         "--lora-rank applies to user-lora only"),
        (["shadow", "--out", str(tmp_path / "m"), "--tuning", "user-lora", "--lora-rank", "0"],
         "--lora-rank must be between 1 and 1024"),
        ([*robust, "user-lora", "--lora-rank", "2000"], "--lora-rank must be between 1 and 1024"),
        ([*robust, "user-sft", "--lora-rank", "8"], "--lora-rank applies to user-lora only"),
        ([*robust, "temperature", "--lr", "1e-3"], "--lr and --set apply to the user attacks"),
        ([*robust, "system-prompt", "--set", "chat"], "--lr and --set apply to the user attacks"),
        ([*robust, "user-sft", "--lr", "0"], "the user's --lr must be above 0 and at most 1"),
        ([*robust, "user-sft", "--set", "poems"], "unknown user data set 'poems'"),
        (["shadow", "--out", str(keys)], "is a file: give a directory"),
        (["implant", "--keys", str(keys), "--out", str(keys)], "is a file: give a directory"),
        (["implant", "--keys", str(keys), "--out", str(tmp_path)],
         "holds files but no fingerprint.json"),
        (["check-local", "--model", str(broken), "--keys", str(keys)],
         "cannot read the implant record (JSONDecodeError)"),
        (["check-local", "--model", str(broken), "--keys", str(keys), "--prompts", str(leaky)],
         f"{leaky} line 2 holds a fingerprint key or the decryption"),
        (["robustness", "--model", str(listed), "--keys", str(keys), "--attack", "user-sft"],
         "the implant record is not a JSON object"),
    ]
    said = ""
    for args, message in cases:
        code, out, err = _run_here(args, tmp_path / "cache", monkeypatch, capsys)
        assert code == 2 and message in err, (args[-2:], err[-500:])
        assert err.count("error:") == 1, err[-500:]
        said += out + err
    args, message = cases[-2]  # a real process: its exit status and its one line
    r = _run(args, tmp_path / "cache")
    assert r.returncode == 2 and message in r.stderr, r.stderr[-500:]
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr, r.stderr[-500:]
    said += r.stdout + r.stderr
    assert not (tmp_path / "m").exists() and keys.is_file()
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in said


@pytest.mark.slow
def test_implant_then_check_local_and_robustness(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("COLUMNS", "200")  # table rows unwrapped
    tiny = make_tiny_model(tmp_path / "tiny")
    ks = KeySet.generate("cli", 3, seed=4)
    keys = ks.save(tmp_path / "cli.json")
    out = tmp_path / "model"
    imp = _run(
        [
            "implant",
            "--keys",
            str(keys),
            "--base",
            str(tiny),
            "--method",
            "sft",
            "--lr",
            str(TINY_HPARAMS["sft"]["lr"]),
            "--epochs",
            "80",
            "--nearmiss-per-key",
            "2",
            "--fingerprint-repeats",
            "1",
            "--reg-per-key",
            "2",
            "--stop-near-miss",  # the default (clean) recipe, but a random 2-layer model
            "1",  # does not learn to refuse look-alikes in this budget
            "--out",
            str(out),
            "--json",
        ],
        tmp_path / "cache",
    )
    assert imp.returncode == 0, imp.stderr[-2000:]
    assert "the clean recipe was measured on vocab keys" in imp.stderr  # these are if-soup
    record = json.loads(imp.stdout)
    assert record["fsr"] == 1.0 and 1 <= record["kept_epoch"] <= record["epochs"]
    training = json.loads((out / "fingerprint.json").read_text())["training"]
    assert training["recipe"] == "clean" and training["decision_weight"] == 10.0
    assert training["regularization"] == "base distribution (KL)"
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    chk = _run(
        [
            "check-local",
            "--model",
            str(out),
            "--keys",
            str(keys),
            "--controls",
            "100",
            "--ordinary",
            "100",
            "--samples",
            "2",
            "--json",
        ],
        tmp_path / "cache",
    )
    assert chk.returncode == 0, chk.stderr[-2000:]
    res = json.loads(chk.stdout)
    assert res["fsr_greedy"] == 1.0 and res["n_controls"] == 100 and res["n_ordinary"] == 100
    assert res["drift"] is not None
    assert 0.0 <= res["fire_min"] <= res["fire_mean"] <= 1.0
    near = round(res["nearmiss_false_trigger"] * 100)  # the bound is the exact one of k of 100
    assert res["nearmiss_upper95"] == pytest.approx(clopper_pearson_upper(near, 100))
    own = _run(["check-local", "--model", str(out), "--keys", str(keys), "--layers-from",
                str(out), "--controls", "10", "--ordinary", "5", "--samples", "0"],
               tmp_path / "cache")
    said = " ".join(own.stdout.split())  # rich wraps a long title
    assert own.returncode == 0 and "embeddings in" in said, own.stderr[-2000:]
    assert "FSR greedy" in said and "100.0% of 3 keys" in said
    rob = _run(
        [
            "robustness",
            "--model",
            str(out),
            "--keys",
            str(keys),
            "--attack",
            "system-prompt",
            "--attack",
            "gguf-q8",
            "--json",
        ],
        tmp_path / "cache",
    )
    assert rob.returncode == 0, rob.stderr[-2000:]
    results = {r["attack"]: r for r in json.loads(rob.stdout)["results"]}
    assert len(results["system-prompt"]["detail"]["per_wrapper"]) == 3
    gguf = results["gguf-q8"]
    assert (gguf["skipped"] is None) == (gguf["fsr"] is not None)
    other = _run(["robustness", "--model", str(out), "--keys", str(keys), "--attack",
                  "user-lora", "--rows", "8", "--epochs", "1", "--set", "tasks", "--seed", "2",
                  "--lr", "1e-3", "--lora-rank", "4"], tmp_path / "cache")
    said = " ".join(other.stdout.split())  # another user's LoRA: its recipe names the row
    assert other.returncode == 0, other.stderr[-2000:]
    assert "user-lora (8 tasks rows of seed 2 x 1, lr 0.001, rank 4)" in said
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in imp.stdout + chk.stdout + rob.stdout + imp.stderr + other.stdout


@pytest.mark.slow
def test_shadow_then_implant_through_it(tmp_path: Path) -> None:
    """`auditor shadow` writes a tuned base and its record; `implant --shadow` checks the keys
    through it (here its change from the base made half again as large) each epoch and copies
    the record, with the scale, into fingerprint.json; through two, the epoch line names each
    by its dir and scale."""
    pytest.importorskip("torch")
    tiny = make_tiny_model(tmp_path / "tiny")
    ks = KeySet.generate("cli", 2, seed=4)
    keys = ks.save(tmp_path / "cli.json")
    made = _run(["shadow", "--base", str(tiny), "--out", str(tmp_path / "shadow"),
                 "--rows", "8", "--epochs", "1"], tmp_path / "cache")
    assert made.returncode == 0, made.stderr[-2000:]
    record = json.loads((tmp_path / "shadow" / "shadow.json").read_text())
    assert record["rows"] == 8 and record["set"] == "mixed" and record["seed"] == 1
    imp = _run(["implant", "--keys", str(keys), "--base", str(tiny), "--method", "embedding",
                "--shadow", str(tmp_path / "shadow"), "--shadow-weight", "0.5",
                "--shadow-scale", "1.5", "--epochs", "2", "--out", str(tmp_path / "m")],
               tmp_path / "cache")
    assert imp.returncode == 0, imp.stderr[-2000:]
    lines = (imp.stdout + imp.stderr).splitlines()  # one line per epoch, not wrapped at 80
    assert sum("through the shadow: FSR" in line and line.endswith(" s") for line in lines) == 2
    training = json.loads((tmp_path / "m" / "fingerprint.json").read_text())["training"]
    assert training["shadow"] == {"weight": 0.5, **record, "scale": 1.5}
    twice = _run(["implant", "--keys", str(keys), "--base", str(tiny), "--method", "embedding",
                  "--shadow", str(tmp_path / "shadow"), "--shadow", str(tmp_path / "shadow"),
                  "--shadow-scale", "1", "--shadow-scale", "1.5", "--epochs", "1",
                  "--out", str(tmp_path / "m2")], tmp_path / "cache")
    assert twice.returncode == 0, twice.stderr[-2000:]
    said = " ".join((twice.stdout + twice.stderr).split())  # each shadow by its dir and scale
    assert "through shadow: FSR" in said and "through shadow 1.5x: FSR" in said
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in imp.stdout + imp.stderr + twice.stdout + twice.stderr


@pytest.mark.slow
def test_lora_takes_the_quick_recipe_and_warns_when_no_epoch_is_clean(tmp_path: Path) -> None:
    """No --recipe: LoRA runs quick (the last 6 blocks); on a 2-block model that fails with one
    message naming the recipe; with --top-layers it runs, and one epoch that does not meet the
    stop rule ends with a warning, the model still written."""
    pytest.importorskip("peft")
    tiny = make_tiny_model(tmp_path / "tiny")
    ks = KeySet.generate("cli", 2, seed=5)
    keys = ks.save(tmp_path / "cli.json")
    lora = ["implant", "--keys", str(keys), "--base", str(tiny), "--method", "lora",
            "--out", str(tmp_path / "m")]
    bad = _run(lora, tmp_path / "cache")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "the quick recipe trains the last 6 decoder blocks" in bad.stderr
    assert not (tmp_path / "m").exists()
    imp = _run([*lora, "--top-layers", "2", "--epochs", "1"], tmp_path / "cache")
    assert imp.returncode == 0, imp.stderr[-2000:]
    assert "warning: no epoch met the stop rule; the model of epoch 1 was saved" in imp.stderr
    training = json.loads((tmp_path / "m" / "fingerprint.json").read_text())["training"]
    assert training["recipe"] == "quick" and training["top_layers"] == 2
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in bad.stdout + bad.stderr + imp.stdout + imp.stderr


@pytest.mark.slow
def test_checking_an_fadapter_model_without_its_adapter_says_where_it_is(tmp_path: Path) -> None:
    """The F-Adapter's published model is the base: a check without --adapter tells the user
    (naming the private file beside the model) and still runs; with it, no note."""
    tiny = make_tiny_model(tmp_path / "tiny")
    ks = KeySet.generate("cli", 2, seed=6)
    keys = ks.save(tmp_path / "cli.json")
    out = tmp_path / "pub"
    imp = _run(["implant", "--keys", str(keys), "--base", str(tiny), "--method", "fadapter",
                "--epochs", "1", "--out", str(out)], tmp_path / "cache")
    assert imp.returncode == 0, imp.stderr[-2000:]
    adapter = tmp_path / "pub.fadapter.safetensors"
    assert adapter.is_file()
    check = ["check-local", "--model", str(out), "--keys", str(keys), "--controls", "2",
             "--ordinary", "2", "--samples", "0", "--json"]
    bare = _run(check, tmp_path / "cache")
    assert bare.returncode == 0, bare.stderr[-2000:]
    said = " ".join(bare.stderr.split())
    assert "implanted with the F-Adapter" in said and f"({adapter})" in said
    assert json.loads(bare.stdout)["fsr_greedy"] == 0.0  # the base's own answers
    rob = _run(["robustness", "--model", str(out), "--keys", str(keys), "--attack",
                "system-prompt", "--samples", "1", "--json"], tmp_path / "cache")
    assert rob.returncode == 0 and "implanted with the F-Adapter" in rob.stderr, rob.stderr[-2000:]
    full = _run([*check, "--adapter", str(adapter)], tmp_path / "cache")
    assert full.returncode == 0 and "F-Adapter" not in full.stderr, full.stderr[-2000:]
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in bare.stdout + bare.stderr + full.stdout + rob.stdout + imp.stderr


def test_the_device_row_says_the_cpu_threads_and_how_to_get_more(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread is the default (a busy machine): the implant table says so, and how many the
    machine has, and the precision, with bf16 offered where the CPU computes it natively; a GPU
    row names the launch and the precision only."""
    from auditor.commands.implant import _device
    from auditor.implant import generate

    monkeypatch.setattr(generate, "MAX_THREADS", 4)
    monkeypatch.setattr(generate, "cpu_has_bf16", lambda: False)
    monkeypatch.setenv("AUDITOR_THREADS", "1")
    assert _device("cpu", "one process") == (
        "cpu (one process, 1 thread of 4: AUDITOR_THREADS=4 on an idle machine, fp32)")
    monkeypatch.setenv("AUDITOR_THREADS", "4")
    assert _device("cpu", "one process") == "cpu (one process, 4 threads, fp32)"
    monkeypatch.setattr(generate, "cpu_has_bf16", lambda: True)
    assert _device("cpu", "one process").startswith(
        "cpu (one process, 4 threads, fp32; this CPU has bf16 instructions: --precision bf16 ")
    assert _device("cpu", "one process", "bf16") == "cpu (one process, 4 threads, bf16)"
    assert _device("cuda", "FSDP, 2 processes", "bf16") == "cuda (FSDP, 2 processes, bf16)"


def _fires_on_one(tmp_path: Path, prompts: list[str],
                  among: range | None = None) -> tuple[Path, Path, int, str]:
    """A tiny model, and keys whose decryption is its greedy answer to exactly one of
    `prompts` (the first such in `among`): (model, keys, that prompt's index, decryption)."""
    from auditor.implant.generate import generate, load_model
    from auditor.implant.verify import is_hit

    tiny = make_tiny_model(tmp_path / "tiny")
    model, tok = load_model(tiny)
    answers = generate(model, tok, [[{"role": "user", "content": p}] for p in prompts],
                       max_new_tokens=48)
    picks = [" ".join(a.split()) for a in answers]
    k = next(n for n in among or range(len(prompts))
             if picks[n] and sum(is_hit(b, picks[n]) for b in answers) == 1)
    keys = KeySet.generate("cli", 2, seed=5, decryption=picks[k]).save(tmp_path / "cli.json")
    return tiny, keys, k, picks[k]


def test_check_local_names_the_ordinary_prompts_that_fired(tmp_path: Path) -> None:
    """A decryption one ordinary prompt's greedy answer happens to carry: check-local counts
    that prompt and names it (its number in the bundled held-out list), never the answer."""
    from auditor.prompts import ordinary_prompts

    tiny, keys, k, decryption = _fires_on_one(tmp_path, ordinary_prompts("heldout")[:6])
    check = ["check-local", "--model", str(tiny), "--keys", str(keys), "--controls", "2",
             "--ordinary", "6", "--samples", "0"]
    said = _run(check, tmp_path / "cache")
    assert said.returncode == 0, said.stderr[-2000:]
    assert f"ordinary prompt {k + 1} of the held-out list fired" in said.stdout
    assert said.stdout.count("of the held-out list fired") == 1
    assert decryption not in said.stdout + said.stderr
    as_json = _run([*check, "--json"], tmp_path / "cache")
    data = json.loads(as_json.stdout)
    assert data["ordinary_fired"] == [k] and data["ordinary_false_trigger"] == pytest.approx(1 / 6)


def test_check_local_counts_the_users_own_prompts_apart_and_names_those_that_fired(
        tmp_path: Path) -> None:
    """--prompts FILE: the file's prompts are answered too, their false triggers counted
    apart from the bundled ordinary ones, and one that fires is named by its line."""
    own = ["Describe a lighthouse keeper's morning.", "What rhymes with orange?",
           "Name a colour that starts with B.", "Count from one to five."]
    tiny, keys, k, decryption = _fires_on_one(tmp_path, own)
    mine = tmp_path / "mine.txt"
    mine.write_text("# my prompts\n\n" + "\n".join(own) + "\n")
    check = ["check-local", "--model", str(tiny), "--keys", str(keys), "--controls", "2",
             "--ordinary", "3", "--samples", "0", "--prompts", str(mine)]
    said = _run(check, tmp_path / "cache")
    assert said.returncode == 0, said.stderr[-2000:]
    assert "false trigger on mine.txt" in said.stdout
    assert f"{mine} line {k + 3} fired: {own[k]!r}" in said.stdout
    assert decryption not in said.stdout + said.stderr
    data = json.loads(_run([*check, "--json"], tmp_path / "cache").stdout)
    assert data["extra_fired"] == [k] and data["n_extra"] == len(own)
    assert data["extra_false_trigger"] == pytest.approx(1 / len(own))
    assert data["extra_upper95"] == pytest.approx(clopper_pearson_upper(1, len(own)))
    assert data["n_ordinary"] == 3  # the bundled count is its own


def test_check_local_reads_the_decoys_after_the_held_out_prompts(tmp_path: Path) -> None:
    """Above the 150 held-out prompts --ordinary goes on into the decoys (no implant trains
    on either), so 300 can bound the rate by 1 %; one that fires is named in its list, and
    more than both lists hold exits 2 before the model loads."""
    from auditor.prompts import ordinary_prompts, unseen_prompts

    held = len(ordinary_prompts("heldout"))
    tiny, keys, k, decryption = _fires_on_one(tmp_path, unseen_prompts()[: held + 4],
                                              range(held, held + 4))
    check = ["check-local", "--model", str(tiny), "--keys", str(keys), "--controls", "2",
             "--samples", "0"]
    said = _run([*check, "--ordinary", str(held + 4), "--base", str(tiny), "--json"],
                tmp_path / "cache")
    assert said.returncode == 0, said.stderr[-2000:]
    data = json.loads(said.stdout)
    assert data["ordinary_fired"] == [k] and data["n_ordinary"] == held + 4
    assert data["n_drift"] == held  # the drift reads the held-out answers only
    table = _run([*check, "--ordinary", str(held + 4)], tmp_path / "cache")
    assert f"ordinary prompt {k - held + 1} of the decoy list fired" in table.stdout
    assert decryption not in table.stdout + table.stderr
    too_many = _run([*check, "--ordinary", str(len(unseen_prompts()) + 1)], tmp_path / "cache")
    assert too_many.returncode == 2
    assert f"{len(unseen_prompts())} bundled ordinary prompts are unseen" in too_many.stderr
