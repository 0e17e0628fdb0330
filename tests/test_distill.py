"""Distillation: the teach stage's cached teacher outputs, their staleness checks, and the
soft loss in training (the teacher view follows each sample's flip)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import mlflow
import numpy as np
import pytest
import torch

from emovision import artifact, distill
from emovision.config import Params
from emovision.data.prepared import DIGEST_CHARS, load_split, split_digest
from emovision.inference import load_classifier
from emovision.onnx_backend import export_onnx
from emovision.scoring import predict_proba
from emovision.training import SoftTargets, SplitTensors, fit, load_train_val, preprocess_config
from stages.prepare import main as prepare_main
from stages.teach import main as teach_main
from stages.train import main as train_main
from tests.conftest import REPO, write_params

PROBS = "data/teacher/probs.npz"
DEMO_DISTILLS = {"demo": {"distill": True}}  # these tests distil on the demo set, which is off by default


@pytest.fixture
def taught(in_tmp, mlflow_store):
    """Prepared demo data and a teacher cache made by the teach stage with the shipped model."""
    write_params(in_tmp / "params.yaml", {**DEMO_DISTILLS, "distill": {"teachers": ["pretrained"], "alpha": 0.5}})
    assert prepare_main(["--params", "params.yaml"]) == 0
    assert teach_main(["--params", "params.yaml"]) == 0
    return in_tmp


def test_teach_caches_the_teachers_views(taught):
    cache = distill.read_cache(taught / PROBS)
    x, y = load_split(taught / "data" / "prepared", "train")
    assert cache.probs.dtype == np.float16 and cache.probs.shape == (2, len(y), 7)
    assert cache.views == ("identity", "hflip") and cache.teachers == ("pretrained",)
    assert cache.train == split_digest(x, y) and len(cache.digests[0]) == DIGEST_CHARS
    # the one prediction path: each view is the classifier's own output on that view, no TTA
    clf = load_classifier("pretrained", "cpu")
    np.testing.assert_allclose(cache.probs[0], clf.predict_proba(x, tta=False), atol=1e-3)
    np.testing.assert_allclose(cache.probs[1], clf.predict_proba(x[:, :, ::-1], tta=False), atol=1e-3)
    # deterministic bytes: the same teachers on the same data leave DVC nothing to re-run
    before = (taught / PROBS).read_bytes()
    assert teach_main(["--params", "params.yaml"]) == 0
    assert (taught / PROBS).read_bytes() == before


def test_teach_reuses_committed_outputs_only_when_they_match(taught, capsys):
    made = distill.read_cache(taught / PROBS)
    # committed outputs told apart from a fresh computation by their (mirrored) probabilities
    distill.write_cache(taught / "committed.npz", distill.TeacherCache(**{**vars(made), "probs": made.probs[::-1]}))
    write_params(taught / "params.yaml", {**DEMO_DISTILLS, "distill": {"teachers": ["pretrained"], "alpha": 0.5,
                                                      "reuse": "committed.npz"}})
    capsys.readouterr()
    assert teach_main(["--params", "params.yaml"]) == 0
    assert "reusing committed.npz" in capsys.readouterr().out
    assert (taught / PROBS).read_bytes() == (taught / "committed.npz").read_bytes()
    # made by other teachers: not reused, the teachers run again and say why
    distill.write_cache(taught / "committed.npz", distill.TeacherCache(**{**vars(made), "teachers": ("other",)}))
    assert teach_main(["--params", "params.yaml"]) == 0
    out = capsys.readouterr().out
    assert "not reusing committed.npz holds the outputs of teachers ['other']" in out and "stages.teach" not in out
    np.testing.assert_array_equal(distill.read_cache(taught / PROBS).probs, made.probs)
    # damaged: not reused, and no advice meant for distill.probs (to delete the committed file)
    (taught / "committed.npz").write_bytes((taught / PROBS).read_bytes()[:1000])
    assert teach_main(["--params", "params.yaml"]) == 0
    out = capsys.readouterr().out
    assert "not reusing committed.npz: unreadable teacher probabilities file (BadZipFile): running the teachers" in out


COMMITTED_OUTPUTS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "teachers").glob("*.npz"))


def test_params_reuse_a_committed_teacher_file():
    assert Params().distill.reuse in COMMITTED_OUTPUTS


@pytest.mark.parametrize("committed", COMMITTED_OUTPUTS)
def test_committed_teacher_outputs_belong_to_fer2013_and_the_committed_teachers(fer2013_prepared, monkeypatch,
                                                                               committed):
    """Each teachers/*.npz is what the teach stage would compute on the real Training split."""
    monkeypatch.chdir(REPO)  # the references inside it are project paths, as in params.yaml
    cache = distill.read_cache(committed)
    x, y = load_split(fer2013_prepared, "train")
    classes = json.loads((fer2013_prepared / "meta.json").read_text())["classes"]
    distill.check_cache(committed, cache, cache.teachers, classes, split_digest(x, y), len(x), "cpu")
    assert len(cache.teachers) >= 2 and all(t.startswith("teachers/") for t in cache.teachers)
    sample = np.random.default_rng(0).choice(len(x), 256, replace=False)
    mean = np.mean([load_classifier(t, "cpu").predict_proba(x[sample], tta=False) for t in cache.teachers], axis=0)
    np.testing.assert_allclose(cache.probs[0][sample], mean, atol=2e-3)


def test_the_demo_set_trains_on_labels_unless_demo_distill(taught, capsys):
    """params.yaml names FER2013 teachers; a fresh clone's demo `dvc repro` must not distil
    synthetic faces from them (nor run them)."""
    write_params(taught / "params.yaml", {"distill": {"teachers": ["models/nope.pt"], "alpha": 0.5}})
    capsys.readouterr()
    assert teach_main(["--params", "params.yaml"]) == 0  # the missing teacher is never loaded
    assert distill.read_cache(taught / PROBS).teachers == ()
    assert train_main(["--params", "params.yaml"]) == 0
    assert "distillation off (demo.distill" in capsys.readouterr().out
    run = mlflow.MlflowClient().get_run(json.loads((taught / "models" / "run.json").read_text())["run_id"])
    assert run.data.params["distill.alpha"] == "0.0" and run.data.tags["distill"] == "off"


def test_no_teachers_writes_an_empty_marker(in_tmp):
    write_params(in_tmp / "params.yaml")
    assert teach_main(["--params", "params.yaml"]) == 0  # reads no data: nothing prepared here
    cache = distill.read_cache(in_tmp / PROBS)
    assert cache.teachers == () and cache.probs.size == 0 and (in_tmp / PROBS).stat().st_size < 2000


def test_train_distils_and_logs_the_teachers(taught, capsys):
    assert train_main(["--params", "params.yaml"]) == 0
    # said where a user sees it: a FER2013 training with params.yaml's defaults distils, unsaid before
    assert f"distilling from 1 teacher(s), alpha 0.5, T 4 ({PROBS})" in capsys.readouterr().out
    info = json.loads((taught / "models" / "run.json").read_text())
    run = mlflow.MlflowClient().get_run(info["run_id"])
    assert run.data.tags["distill"] == "1 teacher(s), alpha 0.5, T 4"
    assert run.data.params["distill.alpha"] == "0.5" and "pretrained" in run.data.params["distill.teachers"]
    logged = mlflow.artifacts.load_dict(f"runs:/{info['run_id']}/teachers.json")
    assert logged["teachers"] == ["pretrained"] and logged["views"] == ["identity", "hflip"]


def _refused(capsys, *expected: str) -> None:
    assert train_main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(e in err[0] for e in expected), err


def test_a_stale_cache_is_refused_before_anything_is_touched(taught, capsys):
    (taught / "models").mkdir()
    (taught / "models" / "best.pt").write_bytes(b"the previous model")
    # other teachers than the cache's
    spec, weights = artifact.load_model_dir(artifact.WEIGHTS_DIR)
    artifact.save_model_dir(taught / "teacher", spec, weights)
    write_params(taught / "params.yaml", {**DEMO_DISTILLS, "distill": {"teachers": ["teacher"], "alpha": 0.5}})
    _refused(capsys, PROBS, "teachers ['pretrained']", "python -m stages.teach")
    # the same reference with other weights behind it
    assert teach_main(["--params", "params.yaml"]) == 0
    artifact.save_model_dir(taught / "teacher", spec, {k: v + 1e-3 if v.is_floating_point() else v
                                                       for k, v in weights.items()})
    _refused(capsys, "teacher 'teacher' now has other weights")
    # another train split (a re-prepared dataset)
    artifact.save_model_dir(taught / "teacher", spec, weights)
    write_params(taught / "params.yaml", {**DEMO_DISTILLS, "distill": {"teachers": ["teacher"], "alpha": 0.5},
                                          "base": {"seed": 7}})
    assert prepare_main(["--params", "params.yaml"]) == 0
    _refused(capsys, "another train split")
    # no file, a foreign file
    (taught / PROBS).write_bytes(b"not a zip")
    _refused(capsys, "unreadable teacher probabilities file")
    (taught / PROBS).unlink()
    _refused(capsys, "no teacher probabilities file")
    assert (taught / "models" / "best.pt").read_bytes() == b"the previous model"


def test_a_damaged_teacher_file_says_how_to_get_past_it(taught, capsys):
    """A truncated probs.npz (a full disk, a partial copy) sent train's user to teach ('run
    `python -m stages.teach` ... to recompute it'), and teach refused to replace it ('a file
    this project did not write ... name a new file'): each sent the user to the other."""
    probs = taught / PROBS
    probs.write_bytes(probs.read_bytes()[: probs.stat().st_size // 2])
    _refused(capsys, "unreadable teacher probabilities file (BadZipFile): delete it, then run",
             "python -m stages.teach")
    assert teach_main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "is a file this project did not write" in err, err
    assert "or delete it if it is a damaged output of this stage" in err, err
    probs.unlink()  # as both lines say
    assert teach_main(["--params", "params.yaml"]) == 0


@pytest.mark.parametrize("distill_params, expected", [
    ({"alpha": 0.5}, "distill.alpha must be 0 while distill.teachers is empty"),
    ({"teachers": ["pretrained"], "alpha": 1.5}, "distill.alpha must be in [0, 1]"),
    ({"teachers": ["pretrained"], "temperature": 0}, "distill.temperature must be in (0, 20.0]"),
    ({"teachers": ["pretrained", "pretrained"]}, "distill.teachers must be model references"),
    ({"teachers": "pretrained"}, "distill.teachers must be a list of strings"),
])
def test_bad_distill_params_fail_in_one_line(in_tmp, capsys, distill_params, expected):
    write_params(in_tmp / "params.yaml", {"distill": distill_params})
    for main in (teach_main, train_main):
        assert main(["--params", "params.yaml"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (in_tmp / "data").exists()


def test_missing_teacher_fails_in_one_line(taught, capsys):
    write_params(taught / "params.yaml", {**DEMO_DISTILLS, "distill": {"teachers": ["models/nope.pt"]}})
    assert teach_main(["--params", "params.yaml"]) == 2
    assert "model 'models/nope.pt' not found" in capsys.readouterr().err


def test_every_teacher_is_checked_before_any_teacher_runs(in_tmp, capsys):
    """A missing or other-classes teacher after a good one was found only after the good one had
    scored the whole train split (2 x 28,709 faces on FER2013), in a line naming no param."""
    spec, weights = artifact.load_model_dir(artifact.WEIGHTS_DIR)
    artifact.save_model_dir(in_tmp / "reordered", dataclasses.replace(spec, classes=spec.classes[::-1]), weights)
    export_onnx(spec, weights, in_tmp / "fer.onnx")  # an export has no weights to hash: a traceback before
    artifact.save_model_dir(in_tmp / "same", spec, weights)  # the shipped model under another name
    write_params(in_tmp / "params.yaml", {**DEMO_DISTILLS, "distill": {"teachers": ["pretrained"]}})
    assert prepare_main(["--params", "params.yaml"]) == 0
    capsys.readouterr()
    for bad, says in (("models/nope.pt", "distill.teachers 'models/nope.pt': model 'models/nope.pt' not found"),
                      ("reordered", "distill.teachers 'reordered' predicts classes neutral, surprise"),
                      ("fer.onnx", "distill.teachers 'fer.onnx': fer.onnx: an ONNX export, with no PyTorch weights"),
                      ("same", "distill.teachers 'same' has the weights of 'pretrained'")):  # counted twice before
        write_params(in_tmp / "params.yaml", {**DEMO_DISTILLS, "distill": {"teachers": ["pretrained", bad]}})
        assert teach_main(["--params", "params.yaml"]) == 2
        out, err = capsys.readouterr()
        assert "teacher pretrained:" not in out, out  # no teacher ran
        assert err.count("\n") == 1 and says in err, err
        assert not (in_tmp / PROBS).exists()


# ---------------------------------------------------------------- the soft loss in training

FAST = {"model.width": 8, "train.batch_size": 32, "train.threads": 1, "train.ema_decay": 0.0,
        "augment.rotation": 0.0, "augment.scale": 0.0, "augment.translate": 0.0, "augment.erasing": 0.0}


def test_the_teacher_view_follows_each_samples_flip():
    """Teacher targets that differ only by view (identity -> class 0, mirror -> class 1) on faces
    bright on the left: a student that learned them tells a face from its mirror, which it
    could not if the flip mask were ignored or the views swapped."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(256, 1, 48, 48, generator=gen) * 40 + 90).to(torch.uint8)
    x[..., :24] += 80
    data = SplitTensors(x, torch.randint(0, 7, (256,), generator=gen))
    probs = torch.full((2, 256, 7), 0.01)
    probs[0, :, 0] = probs[1, :, 1] = 0.94
    params = Params().replace(**FAST, **{"train.epochs": 3, "train.amp": "off", "train.label_smoothing": 0.0})
    model = fit(params, data, data, [str(c) for c in range(7)], soft=SoftTargets(probs, 1.0, 1.0))["model"]
    pre = preprocess_config(params)
    plain = predict_proba(model, x, pre, tta=False).argmax(1)
    mirrored = predict_proba(model, x.flip(-1), pre, tta=False).argmax(1)
    assert (plain == 0).float().mean() > 0.9 and (mirrored == 1).float().mean() > 0.9


def test_alpha_zero_trains_exactly_as_without_teachers(taught):
    """The distillation branch draws no random numbers: alpha 0 repeats the label-only run."""
    params = Params().replace(**FAST, **{"train.epochs": 1, "train.amp": "off"})
    meta, train, val = load_train_val(params)
    soft = SoftTargets(distill.tempered(distill.read_cache(taught / PROBS).probs, 4.0), 0.0, 4.0)
    runs = [fit(params, train, val, meta["classes"], soft=s)["history"] for s in (None, soft)]
    strip = [[{k: v for k, v in h.items() if k not in ("images_per_s", "epoch_s")} for h in r] for r in runs]
    assert strip[0] == strip[1]


# Margins measured over seeds 0-5 (demo set, 40 faces per class, width 16, 8 epochs): the
# student agrees with the teacher on 10-23% of its training faces with alpha 0 and on 26-35%
# with alpha 1; the gap was 0.11 to 0.25, so 0.05 leaves room.
AGREEMENT_GAIN = 0.05


def test_distilled_student_agrees_with_its_teacher(in_tmp):
    write_params(in_tmp / "params.yaml", {"data": {"synthetic_train_per_class": 40}})
    assert prepare_main(["--params", "params.yaml"]) == 0
    params = Params().replace(**{**FAST, "model.width": 16, "train.epochs": 8, "base.seed": 0,
                                 "data.synthetic_train_per_class": 40})
    meta, train, val = load_train_val(params)
    x, y = load_split(in_tmp / "data" / "prepared", "train")
    cache = distill.teacher_probs(["pretrained"], x, y, meta["classes"], "cpu")
    teacher = cache.probs[0].argmax(1)
    agree = []
    for alpha in (0.0, 1.0):
        soft = SoftTargets(distill.tempered(cache.probs, 4.0), alpha, 4.0)
        model = fit(params, train, val, meta["classes"], soft=soft)["model"]
        student = predict_proba(model, train.x, preprocess_config(params), tta=False).argmax(1).numpy()
        agree.append(float((student == teacher).mean()))
    assert agree[1] >= agree[0] + AGREEMENT_GAIN, agree


def test_registering_a_distilled_model_logs_its_recipe_and_teachers(in_tmp, mlflow_store):
    """`promote --pretrained` logs the shipped model's recipe and one nested run per teacher (its
    recipe and PublicTest figures), so `mlflow ui` shows how the model was made."""
    from emovision import tracking
    from stages.promote import log_lineage

    teachers = [str(REPO / "teachers" / name) for name in ("cnn-w48-s42", "cnn-w48-s7-live")]
    spec = artifact.read_spec(teachers[1])
    student = spec.replace(recipe={**spec.recipe, "distill.teachers": teachers, "distill.alpha": 0.5})
    tracking.setup()  # the temp store's experiment (MLflow keeps the last one a test used)
    with tracking.tracked_run(run_name="register") as run:
        log_lineage(student)
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).data.params["distill.alpha"] == "0.5"
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(c.data.tags["teacher"] for c in children) == sorted(teachers)
    for child in children:
        teacher = artifact.read_spec(child.data.tags["teacher"])
        assert child.data.params["base.seed"] == str(teacher.recipe["base.seed"])
        assert child.data.metrics["val_acc"] == pytest.approx(teacher.metrics["no_tta"]["val"]["accuracy"])
        assert "test_acc" not in child.data.metrics  # teachers are never scored on PrivateTest


@pytest.mark.parametrize("key", ["distill.probs", "data.app_views"])
def test_an_output_param_naming_a_users_file_is_refused_and_the_file_kept(in_tmp, capsys, key):
    """distill.probs (teach) and data.app_views (recrop) naming a file of the user's: with the
    outputs persist: true DVC no longer deletes it first, and the stage overwrote it with an
    empty marker .npz, exit 0. Now one line, exit 2, the file kept; the stage's own earlier
    output (an .npz of its arrays) is still replaced, and a folder is refused likewise."""
    from stages.recrop import main as recrop_main

    section, name = key.split(".")
    stage = {"distill.probs": teach_main, "data.app_views": recrop_main}[key]
    (in_tmp / "notes.txt").write_text("my notes\n")
    write_params(in_tmp / "params.yaml", {section: {name: "notes.txt"}})
    assert stage(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {key} notes.txt is a file this project did not write (not an .npz of "
                   f"{', '.join(distill.CACHE_KEYS if section == 'distill' else ('x', 'found', 'train'))}); "
                   f"the stage would overwrite it: name a new file ({getattr(getattr(Params(), section), name)})")
    assert (in_tmp / "notes.txt").read_text() == "my notes\n"
    write_params(in_tmp / "params.yaml", {section: {name: "ours.npz"}})
    assert stage(["--params", "params.yaml"]) == 0 and stage(["--params", "params.yaml"]) == 0
    (in_tmp / "folder").mkdir()
    write_params(in_tmp / "params.yaml", {section: {name: "folder"}})
    assert stage(["--params", "params.yaml"]) == 2
    assert "folder cannot be written (is a folder)" in capsys.readouterr().err
