"""README.md as executable documentation: every entry point it shows, called as written there.

Each test first checks that the README still shows the statement or command it runs, so the
two cannot drift apart. Models are the tiny random HF folders the demos build; paths in the
README ("path/to/hf_clip_folder", "DIR") become temporary folders. The demo commands and the
op-by-op model calls are in the slow tier; their fast twins are named where they apply.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import shlex
import stat
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from retformer_jax import stages
from test_kb_stages import small_config

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_shows(*statements: str) -> None:
  """Fails unless every statement appears in README.md (whitespace runs compared as one)."""
  flat = " ".join(README.split())
  for s in statements:
    assert " ".join(s.split()) in flat, f"README.md no longer shows: {s}"


def bash_blocks() -> list[str]:
  return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def readme_commands(prefix: str) -> list[str]:
  """Command lines of the README's bash blocks that start with `prefix` (continuations
  joined, comments kept)."""
  lines = [line.strip() for block in bash_blocks()
           for line in block.replace("\\\n", " ").splitlines()]
  return [" ".join(line.split()) for line in lines if line.startswith(prefix)]


def shell_words(line: str, **env: str) -> list[str]:
  """The words bash gives a command `line` (quotes removed, $VARS and ~ expanded as bash
  expands them), with `env` added to the environment."""
  out = subprocess.run(["bash", "-c", 'words() { printf "%s\\0" "$@"; }; words ' + line],
                       env=dict(os.environ, **env), capture_output=True, text=True, check=True)
  return out.stdout.split("\0")[:-1]


# ------------------------------------------------------------------ CLIP, from Python

@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
  from retformer_jax.demo.clip import build_demo_clip

  corpus = ["a photo of a dog.", "a photo of a cat.", "two birds in a tree"]
  return build_demo_clip(str(tmp_path_factory.mktemp("readme") / "clip"), corpus)


@pytest.mark.slow  # op-by-op, as written; the jitted twin is tests/test_demo_clip.py
def test_clip_loader_preprocessor_and_both_towers(clip_folder):
  readme_shows(
      'model, params = hf.load_clip("path/to/hf_clip_folder")',
      'img = model.apply({"params": params}, pixels, method=model.encode_image)',
      'txt = model.apply({"params": params}, input_ids, attention_mask, '
      'method=model.encode_text)',
      'pre = ClipPreprocessor.from_folder("path/to/hf_clip_folder")',
      "pixels = pre.images(list_of_uint8_hwc)",
      'input_ids, attention_mask = pre.texts(["a photo of a dog."])')
  from retformer_jax.convert import hf
  from retformer_jax.data.clip_preprocess import ClipPreprocessor

  rng = np.random.default_rng(0)
  list_of_uint8_hwc = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                       for h, w in ((40, 57), (32, 32))]
  model, params = hf.load_clip(clip_folder)
  pre = ClipPreprocessor.from_folder(clip_folder)
  pixels = pre.images(list_of_uint8_hwc)
  input_ids, attention_mask = pre.texts(["a photo of a dog."])
  img = model.apply({"params": params}, pixels, method=model.encode_image)
  txt = model.apply({"params": params}, input_ids, attention_mask, method=model.encode_text)
  d = model.config.projection_dim
  assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == np.float32  # NHWC, normalised
  assert input_ids.shape == attention_mask.shape and input_ids.shape[0] == 1
  assert img.shape == (2, d) and txt.shape == (1, d)
  assert np.isfinite(np.asarray(img)).all() and np.isfinite(np.asarray(txt)).all()
  # "projected, not normalised"; equality with HF get_image_features / get_text_features is
  # tests/test_demo_clip.py::test_loads_through_our_loader_and_matches_transformers.
  assert not np.allclose(np.linalg.norm(np.asarray(img), axis=-1), 1.0, atol=1e-3)


# ------------------------------------------------------------------ Qwen2.5-VL, from Python

@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
  from retformer_jax.demo import qwen as demo_qwen

  corpus = ["a dog", "a cat", "a dog runs on the grass", "a cat sleeps on a mat"]
  return demo_qwen.build_demo_qwen(str(tmp_path_factory.mktemp("readme") / "qwen"), corpus,
                                   min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)


@pytest.mark.slow  # op-by-op, as written; the jitted twin is tests/test_qwen_parity.py
def test_qwen_loader_and_hf_style_call(qwen_folder):
  readme_shows(
      'model, params = hf.load_qwen2_5_vl("path/to/Qwen2.5-VL-7B-Instruct")',
      'logits = model.apply({"params": params}, input_ids, pixel_values, image_grid_thw, '
      'attention_mask)')
  from transformers import AutoTokenizer

  from retformer_jax.convert import hf
  from retformer_jax.data.qwen_preprocess import QwenImageProcessor, QwenPrompter

  model, params = hf.load_qwen2_5_vl(qwen_folder)
  # The HF model's inputs: the flattened patches of the image processor, one image-pad token
  # per merged patch.
  image = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
  pixel_values, grid = QwenImageProcessor.from_folder(qwen_folder)(image)
  image_grid_thw = grid[None]
  prompter = QwenPrompter(AutoTokenizer.from_pretrained(qwen_folder), model.cfg.image_token_id)
  ids = prompter.pair_ids("a dog", int(grid.prod()) // model.cfg.vision.merge_size ** 2)
  input_ids, attention_mask = ids[None], np.ones((1, len(ids)), np.int32)
  logits = model.apply({"params": params}, input_ids, pixel_values, image_grid_thw,
                       attention_mask)
  assert logits.shape == (1, len(ids), model.cfg.text.vocab_size)
  assert np.isfinite(np.asarray(logits)).all()


def test_pair_scorer_as_in_readme(qwen_folder):
  readme_shows(
      "from retformer_jax.retllm.scorer import PairScorer",
      "from retformer_jax.models.qwen_injection import InjectionConfig",
      'sc = PairScorer.from_folder("Qwen2.5-VL-7B-Instruct", dtype="bfloat16", '
      "min_pixels=256*28*28, max_pixels=512*28*28, injection=InjectionConfig(enabled=True))",
      'res = sc.score_image_to_text(image_uint8_hwc, ["a dog", "a cat"])')
  from retformer_jax.models.qwen_injection import InjectionConfig
  from retformer_jax.retllm.scorer import PairScorer

  image_uint8_hwc = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
  sc = PairScorer.from_folder(qwen_folder, dtype="bfloat16",
                              min_pixels=256*28*28, max_pixels=512*28*28,
                              injection=InjectionConfig(enabled=True))
  res = sc.score_image_to_text(image_uint8_hwc, ["a dog", "a cat"])
  assert res.p_true.shape == res.entropy.shape == (2,)
  assert ((0 <= res.p_true) & (res.p_true <= 1)).all() and (res.entropy > 0).all()
  np.testing.assert_array_equal(res.p_true, np.floor(res.p_true * 100) / 100)  # 2 decimals
  # min_pixels is honoured: 256 merged visual tokens at least.
  feats, _ = sc.image_features(image_uint8_hwc)
  assert feats.shape[0] >= 256
  # Scores equal one-pair full forwards: tests/test_scorer.py (slow tier).


# ------------------------------------------------------------------ KB stages and checkpoints

def _tiny_demo_config():
  c = small_config()  # the 4-class demo set of the KB stage tests
  c.model.num_layers, c.model.num_heads, c.model.mlp_ratio = 1, 2, 2
  c.train.batch_size, c.train.epochs = 16, 1
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir after every RetFormer stage, as the demo runs them, on a 4-class demo set."""
  workdir = str(tmp_path_factory.mktemp("readme") / "DIR")
  config = _tiny_demo_config()
  assert tuple(config.stages) == ("zeroshot", "embed", "index", "neighbors", "train", "eval")
  for name in config.stages:
    stages.get(name)(config, workdir)
  return workdir, config


def test_stage_outputs_as_in_readme(trained):
  """The files the stage table and "Outputs of `train` and `eval`" list, where they say."""
  import json

  readme_shows("`zeroshot/<split>/metrics.json`", "`store/<source>/`", "`index/<kb>/`",
               "`neighbors/<kb>/<split>/`", "`eval/<split>/`",
               "rows.npy int64 [N, k], sims.npy float32 [N, k]")
  readme_shows("`DIR/eval/<split>/metrics.json` (`top1`, `many`, `medium`, `few`, `top5`, "
               "`num_examples`, `step`), `per_class_accuracy.png`",
               "and `explanations.png`", "Curves: `DIR/train/metrics.jsonl`",
               "`DIR/checkpoints/run.json`")
  workdir, config = trained
  kb = config.kb.name
  for path in ("store/demo:train/manifest.json", f"index/{kb}/manifest.json",
               f"neighbors/{kb}/test/rows.npy", f"neighbors/{kb}/test/sims.npy"):
    assert os.path.isfile(os.path.join(workdir, path)), path
  with open(os.path.join(workdir, "zeroshot", "test", "metrics.json")) as f:
    zeroshot = json.load(f)
  assert zeroshot["num_examples"] == 4 * config.data.demo.test_per_class
  assert 0 <= zeroshot["top1"] <= 1
  with open(os.path.join(workdir, "eval", "test", "metrics.json")) as f:
    metrics = json.load(f)
  assert set(metrics) == {"top1", "many", "medium", "few", "top5", "num_examples", "step"}
  assert metrics["num_examples"] == 4 * config.data.demo.test_per_class
  for name in ("per_class_accuracy.png", "explanations.png"):
    assert os.path.getsize(os.path.join(workdir, "eval", "test", name)) > 1000
  for path in ("train/metrics.jsonl", "checkpoints/run.json"):
    assert os.path.isfile(os.path.join(workdir, path)), path
  assert any(f.startswith("events.out.tfevents") for _, _, files in os.walk(workdir)
             for f in files)  # TensorBoard


def test_kb_api_as_in_readme(trained):
  readme_shows(
      "from retformer_jax.kb import api",
      "api.open_query_store(workdir, config, split)", "api.open_kb(workdir, config)",
      "kb.image(rows)", "kb.text(rows)", "kb.labels(rows)", "kb.captions(rows)",
      "api.load_neighbors(workdir, config, split)", "(`.rows`, `.sims`)")
  from retformer_jax.kb import api

  workdir, config = trained
  split = "test"
  store = api.open_query_store(workdir, config, split)
  kb = api.open_kb(workdir, config)
  nb = api.load_neighbors(workdir, config, split)
  n = store.count
  assert nb.rows.shape == nb.sims.shape == (n, config.neighbors.k)
  assert nb.rows.dtype == np.int64 and nb.sims.dtype == np.float32
  rows = nb.rows[0]
  image, text = np.asarray(kb.image(rows), np.float32), np.asarray(kb.text(rows), np.float32)
  assert image.shape == text.shape == (len(rows), store.image.shape[1])
  assert len(kb.captions(rows)) == len(rows) and kb.labels(rows).shape == (len(rows),)
  # The similarities are cosines of the query image with the KB images at those rows.
  query = np.asarray(store.image[:n], np.float32)
  sims = np.einsum("nd,nkd->nk", query, np.asarray(kb.image(nb.rows.reshape(-1)),
                                                   np.float32).reshape(n, -1, query.shape[1]))
  np.testing.assert_allclose(nb.sims, sims, atol=5e-3)
  assert (np.diff(nb.sims, axis=1) <= 1e-6).all()  # best first


def test_load_params_as_in_readme(trained, monkeypatch):
  readme_shows("from retformer_jax.train.checkpointing import load_params",
               'params = load_params("DIR/checkpoints")')
  from retformer_jax.train.checkpointing import load_params

  workdir, config = trained
  monkeypatch.chdir(os.path.dirname(workdir))  # "DIR" relative, as written
  params = load_params("DIR/checkpoints")
  assert params["retrieval_head"]["kernel"].shape[-1] == config.data.demo.num_classes
  assert all(isinstance(x, np.ndarray) for x in _leaves(params))


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


# ------------------------------------------------------------------ commands

def _parse_main_flags(words: list[str]):
  """The config of a `python -m retformer_jax.main ...` command, parsed with main's flags."""
  import copy

  from retformer_jax import main

  argv = ["main"] + words[3:]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  for flag in flags.FLAGS.get_flags_for_module(main.__name__):
    if flag.name != "config":
      values[flag.name] = copy.deepcopy(flag)
  values(argv)
  return values.config


def _node(config, key: str):
  for part in key.split("."):
    assert part in config, f"no config key {key}"
    config = config[part]
  return config


# What the README's $VARIABLES and ~ stand for, for the commands below.
SHELL = {"WORKDIR": "/mnt/filestore/inat", "DATA": "/data/tfds", "HOME": "/home/user"}


def test_every_main_command_in_the_readme_parses(monkeypatch):
  """Each `python -m retformer_jax.main` command of the README, split by bash, loads its config
  with every override applied, names known stages and a workdir."""
  monkeypatch.chdir(REPO)
  lines = readme_commands("python -m retformer_jax.main")
  assert len(lines) >= 6
  for line in lines:
    words = shell_words(line, **SHELL)
    assert words[:3] == ["python", "-m", "retformer_jax.main"], line
    assert sum(w.startswith("--workdir=") for w in words) == 1, line
    config = _parse_main_flags(words)
    stages.check_names(config.stages)
    for w in words[3:]:
      if w.startswith("--config."):
        key, value = w[len("--config."):].split("=", 1)
        node = _node(config, key)
        try:
          want = ast.literal_eval(value)
        except (ValueError, SyntaxError):
          want = value
        assert node == want or str(node) == value, (line, key, node)


def test_weight_folders_of_the_readme_commands_are_found(tmp_path, monkeypatch):
  """Where the README's commands point at weights with ~, the folder the stages open exists
  (HOME here holds the folders the README's download commands create)."""
  from retformer_jax.kb import encoder
  from retformer_jax.stages import retllm as retllm_stage

  home = tmp_path / "home"
  for line in readme_commands("huggingface-cli download"):
    words = shell_words(line, HOME=str(home))
    os.makedirs(words[words.index("--local-dir") + 1])
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("HOME", str(home))
  checked = 0
  for line in readme_commands("python -m retformer_jax.main"):
    if "~" not in line:
      continue
    config = _parse_main_flags(shell_words(line, **dict(SHELL, HOME=str(home))))
    if config.clip.path:
      assert os.path.isdir(encoder.clip_folder(config, str(tmp_path))), config.clip.path
      checked += 1
    if config.retllm.model_path:
      assert os.path.isdir(retllm_stage.qwen_folder(config, str(tmp_path)))
      checked += 1
  assert checked


def test_every_config_override_the_readme_names_exists():
  """`--config.a.b=value` anywhere in the README (prose included) names a declared key, and a
  literal value parses with that key's type."""
  spans = re.findall(r"`([^`\n]*--config\.[^`\n]*)`", README)
  spans += [b.replace("\\\n", " ") for b in bash_blocks()]
  found = {}
  for span in spans:
    for word in shlex.split(span, comments=True):
      m = re.fullmatch(r"--config\.([\w.]+)=(.*)", word)
      if m:
        found[m.group(1)] = m.group(2)
  assert len(found) >= 20
  for key, value in sorted(found.items()):
    placeholder = re.search(r"[<>$~|]|^N$|^DIR", value)
    argv = ["main", f"--config={REPO / 'configs' / 'demo.py'}"]
    if not placeholder:
      argv.append(f"--config.{key}={value}")
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    _node(values.config, key)


def test_stages_named_in_the_readme_are_the_registered_ones():
  table = re.findall(r"^\| `(\w+)` \| ", README.split("## The pipeline", 1)[1], flags=re.M)
  registered = list(stages.STAGES)
  assert table[:len(registered)] == registered
  readme_shows("`zeroshot → embed → index → neighbors → train → eval`")


def test_install_commands_match_the_package():
  """The CPU torch the README installs is the one the test extra pins; the extras exist."""
  import tomllib

  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  extras = project["optional-dependencies"]
  [pin] = [r for r in extras["test"] if r.startswith("torch")]
  torch_lines = readme_commands("pip install torch")
  assert torch_lines  # the test setup and the prep extra both install the CPU build first
  for line in torch_lines:
    words = shell_words(line)
    assert words[2] == pin.replace(" ", "")
    assert words[3:] == ["--index-url", "https://download.pytorch.org/whl/cpu"]
  installs = [shell_words(line) for line in readme_commands("pip install -e")]
  assert ["pip", "install", "-e", "."] in installs
  assert ["pip", "install", "-e", ".[test]"] in installs
  for words in installs:
    target = words[3]
    if "[" in target:
      assert target[2:-1] in extras, target


def _fake_bin(tmp_path, name: str, body: str) -> pathlib.Path:
  """An executable `name` on a PATH of its own that records its arguments."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  path = bindir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return bindir


def _run_script(words, env_extra, bindir):
  env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", **env_extra)
  return subprocess.run(words, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_tpu_pod_script_runs_main_on_every_worker(tmp_path):
  [line] = readme_commands("TPU_NAME=")
  words = shell_words(line)
  env = dict(w.split("=", 1) for w in words[:3])
  script, script_args = words[3], words[4:]
  log = tmp_path / "gcloud.args"
  bindir = _fake_bin(tmp_path, "gcloud", f'printf "%s\\n" "$@" > {log}\n')
  r = _run_script(["bash", script, *script_args], env, bindir)
  assert r.returncode == 0, r.stderr
  args = log.read_text().split("\n")
  assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", env["TPU_NAME"]]
  assert f"--zone={env['ZONE']}" in args and "--worker=all" in args
  remote = "\n".join(args[args.index("--command") + 1:])
  [main] = [" ".join(cmd.split()) for cmd in remote.splitlines() if "retformer_jax.main" in cmd]
  assert main.startswith(" ".join(["python -m retformer_jax.main", *script_args,
                                   f"--workdir={env['WORKDIR']}"]))


def test_slurm_script_runs_main_under_srun(tmp_path):
  [line] = readme_commands("sbatch ")
  words = shell_words(line)
  script, script_args = words[2], words[3:]
  directives = re.findall(r"^#SBATCH (\S+)", (REPO / script).read_text(), flags=re.M)
  assert "--signal=TERM@120" in directives and "--ntasks-per-node=1" in directives
  log = tmp_path / "srun.args"
  bindir = _fake_bin(tmp_path, "srun", f'printf "%s\\n" "$@" > {log}\n')
  r = _run_script(["bash", script, *script_args], {}, bindir)
  assert r.returncode == 0, r.stderr
  args = log.read_text().splitlines()
  assert args == ["--kill-on-bad-exit=1", "python", "-m", "retformer_jax.main", *script_args]


def test_local_multiprocess_script_starts_one_main_per_process(tmp_path):
  """The launcher's wiring, with `python` recording what each process gets. The real 2-process
  run is tests/test_launch_multiprocess.py (slow tier)."""
  [line] = readme_commands("NUM_PROCESSES=")
  words = shell_words(line)
  env = dict(w.split("=", 1) for w in words[:2])
  workdir = tmp_path / "mp"
  script_args = [f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in words[3:]]
  bindir = _fake_bin(tmp_path, "python", (
      'echo "$JAX_PROCESS_ID $JAX_NUM_PROCESSES $JAX_COORDINATOR_ADDRESS '
      '$RETFORMER_CPU_COLLECTIVES $JAX_PLATFORMS $XLA_FLAGS" '
      f'>> {tmp_path}/procs\necho "$@" >> {tmp_path}/args\n'))
  r = _run_script(["bash", words[2], *script_args], env, bindir)
  assert r.returncode == 0, r.stderr
  procs = sorted(line.split() for line in (tmp_path / "procs").read_text().splitlines())
  n, d = int(env["NUM_PROCESSES"]), env["DEVICES_PER_PROCESS"]
  assert [p[0] for p in procs] == [str(i) for i in range(n)]
  assert {p[1] for p in procs} == {str(n)} and len({p[2] for p in procs}) == 1
  assert {tuple(p[3:]) for p in procs} == {
      ("gloo", "cpu", f"--xla_force_host_platform_device_count={d}")}
  lines = (tmp_path / "args").read_text().splitlines()
  assert lines == [" ".join(["-m", "retformer_jax.main", *script_args])] * n
  assert sorted(os.listdir(workdir / "logs")) == [f"process_{i}.log" for i in range(n)]


# ------------------------------------------------------------------ the demo commands, run

def _demo_metrics(stdout: str) -> list[float]:
  m = re.search(r"\[eval demo:test\] top-1 ([\d.]+)\s+Many ([\d.]+)\s+Medium ([\d.]+)\s+"
                r"Few ([\d.]+)", stdout)
  assert m, stdout[-2000:]
  return [float(x) for x in m.groups()]


def _run_main(words):
  r = subprocess.run([sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


@pytest.mark.slow
def test_quick_start_commands_as_written(tmp_path):
  """The Quick start demo, its rerun (every stage skipped) and growing its KB, as the README
  gives them, with /tmp/retformer_demo replaced by a temporary folder."""
  workdir = str(tmp_path / "retformer_demo")
  lines = [line for line in readme_commands("python -m retformer_jax.main --config=configs/demo.py")
           if "--workdir=/tmp/retformer_demo " in line + " "]
  assert len(lines) == 2  # the quick start and growing its KB
  quick, grow = [shell_words(line.replace("/tmp/retformer_demo", workdir)) for line in lines]
  first = _demo_metrics(_run_main(quick).stdout)
  table = re.search(r"\| RetFormer \(retrieval, image \+ text\) \| \*\*([\d.]+)\*\* \| "
                    r"\*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \|", README)
  assert table, "README lost the demo results table"
  # The README's figures, to within a few of the 600 test images (other CPUs may round
  # differently).
  np.testing.assert_allclose(first, [float(x) for x in table.groups()], atol=2.0)
  again = _run_main(quick)
  assert "up to date" in again.stderr
  grown = _demo_metrics(_run_main(grow).stdout)
  assert grown != first  # the new KB source reached the neighbours


@pytest.mark.slow
def test_retllm_demo_command_as_written(tmp_path):
  """The RetLLM demo command (its stage in-process: tests/test_retllm_stage.py)."""
  [line] = readme_commands("python -m retformer_jax.main --config=configs/retllm_demo.py")
  _run_main(shell_words(line.replace("/tmp/retllm_demo", str(tmp_path))))
  assert (tmp_path / "retllm" / "demo" / "metrics.json").is_file()
