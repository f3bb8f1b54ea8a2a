"""`dpc study`: rate matching, the plan, the database, the web app, the report."""

import collections
import json
import os
import sqlite3
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("flask", reason="`dpc study` needs the study extra (pip install '.[study]')")

from dpc_tf.study import analysis, codecs, create, db, report, server, simulate  # noqa: E402
from dpc_tf.study import study as study_lib  # noqa: E402
from dpc_tf.evaluation import codecs as classical  # noqa: E402

TARGETS = [0.5, 1.0]
CODECS = ["jpeg420", "webp", "jpeg2000"]


def _photos(folder):
  """Three real 192x256 photo crops (scikit-image ships them), as PNG files."""
  from skimage import data
  from dpc_tf.images import write_image
  crops = {"astronaut": data.astronaut()[:192, :256], "coffee": data.coffee()[100:292, 100:356],
           "chelsea": data.chelsea()[:192, :256]}
  paths = []
  for name, crop in crops.items():
    path = os.path.join(folder, f"{name}.png")
    write_image(path, np.ascontiguousarray(crop))
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  """A study of three codecs on three photos at two rates, and its database."""
  root = tmp_path_factory.mktemp("study")
  paths = _photos(str(root))
  folder = str(root / "study")
  manifest = create.create_study(paths, [codecs.ClassicalStudyCodec(classical.get_codec(n))
                                         for n in CODECS], TARGETS, folder, seed=7,
                                 progress=False, log=lambda _: None)
  return {"root": root, "paths": paths, "folder": folder, "manifest": manifest}


def _fresh_db(made, tmp_path, raters=2):
  study = study_lib.Study(made["folder"])
  path = str(tmp_path / "answers.sqlite")
  conn = db.create(path, study.study_id)
  invited = db.add_raters(conn, study, raters)
  return study, path, conn, [token for _, _, token in invited]


def test_every_stimulus_is_the_best_setting_under_its_target(made):
  from dpc_tf.images import read_image
  manifest = made["manifest"]
  images = {os.path.splitext(os.path.basename(p))[0]: read_image(p, alpha="composite")
            for p in made["paths"]}
  jpeg = classical.get_codec("jpeg420")
  for s in manifest["stimuli"]:
    assert s["role"] == "sentinel" or s["bpp"] <= s["target_bpp"]
    assert os.path.isfile(os.path.join(made["folder"], "images", s["file"]))
    assert s["codec"] not in s["file"] and s["image"] not in s["file"]  # names stay hidden
  # Brute force over every JPEG quality: the study's pick is the largest rate under target.
  for s in manifest["stimuli"]:
    if s["codec"] == "jpeg420" and s["role"] == "test":
      image = images[s["image"]]
      rates = {q: 8 * len(jpeg.encode(image, q)) / image[..., 0].size for q in range(1, 96)}
      best = max(r for r in rates.values() if r <= s["target_bpp"])
      assert s["bpp"] == pytest.approx(best, abs=1e-6), s
  sentinels = [t for t in manifest["trials"] if t["kind"] == "sentinel"]
  assert len(sentinels) == manifest["sentinel"]["count"] >= 2
  stimuli = {s["id"]: s for s in manifest["stimuli"]}
  for t in sentinels:
    bad = stimuli[t["b"]]
    assert t["expected"] == t["a"] and bad["codec"] == "jpeg420"
    assert bad["bpp"] <= create.SENTINEL_MAX_FACTOR * t["target_bpp"]


def test_plan_is_balanced_randomized_and_reproducible(made, tmp_path):
  manifest = made["manifest"]
  stimuli = {s["id"]: s for s in manifest["stimuli"]}
  tests = [t for t in manifest["trials"] if t["kind"] == "test"]
  pairs = collections.Counter(
      (t["image"], t["target_bpp"],
       frozenset((stimuli[t["a"]]["codec"], stimuli[t["b"]]["codec"]))) for t in tests)
  assert len(pairs) == 3 * len(TARGETS) * 3 and set(pairs.values()) == {1}
  for number in range(4):
    sequence = study_lib.rater_sequence(manifest, number)
    assert sorted(s.trial_id for s in sequence) == sorted(t["id"] for t in manifest["trials"])
    trials = {t["id"]: t for t in manifest["trials"]}
    a_left = sum(s.left == trials[s.trial_id]["a"] for s in sequence)
    assert abs(2 * a_left - len(sequence)) <= 1
  assert ([s.trial_id for s in study_lib.rater_sequence(manifest, 0)]
          != [s.trial_id for s in study_lib.rater_sequence(manifest, 1)])
  # Slices of successive raters cover the test trials evenly.
  sliced = dict(manifest, trials_per_rater=6)
  seen = collections.Counter(s.trial_id for r in range(3)
                             for s in study_lib.rater_sequence(sliced, r)
                             if s.trial_id in {t["id"] for t in tests})
  assert len(seen) == len(tests) and set(seen.values()) == {1}
  # The same seed gives the same plan, another seed another order.
  again = create.create_study(made["paths"], [codecs.ClassicalStudyCodec(
      classical.get_codec(n)) for n in CODECS[:2]], [1.0], str(tmp_path / "a"), seed=7,
                              progress=False, log=lambda _: None)
  same = create.create_study(made["paths"], [codecs.ClassicalStudyCodec(
      classical.get_codec(n)) for n in CODECS[:2]], [1.0], str(tmp_path / "b"), seed=7,
                             progress=False, log=lambda _: None)
  other = create.create_study(made["paths"], [codecs.ClassicalStudyCodec(
      classical.get_codec(n)) for n in CODECS[:2]], [1.0], str(tmp_path / "c"), seed=8,
                              progress=False, log=lambda _: None)
  assert again["study_id"] == same["study_id"] and again["trials"] == same["trials"]
  assert other["study_id"] != again["study_id"]


def test_broken_study_folders_are_refused(made, tmp_path):
  import shutil
  folder = str(tmp_path / "copy")
  shutil.copytree(made["folder"], folder)
  victim = made["manifest"]["stimuli"][0]["file"]
  os.rename(os.path.join(folder, "images", victim), os.path.join(folder, "moved.png"))
  with pytest.raises(study_lib.StudyError, match=r"missing .*" + victim):
    study_lib.Study(folder)
  with open(os.path.join(folder, "images", victim), "wb") as f:
    f.write(b"not the image")
  with pytest.raises(study_lib.StudyError, match="differ"):
    study_lib.Study(folder)
  manifest = json.load(open(os.path.join(folder, "study.json")))
  manifest["trials"][0]["a"], manifest["trials"][0]["b"] = (manifest["trials"][0]["b"],
                                                            manifest["trials"][0]["a"])
  json.dump(manifest, open(os.path.join(folder, "study.json"), "w"))
  with pytest.raises(study_lib.StudyError, match="edited"):
    study_lib.Study(folder)
  with pytest.raises(study_lib.StudyError, match="not a study folder"):
    study_lib.Study(str(tmp_path))


def test_a_target_no_setting_reaches_is_an_error(made, tmp_path):
  with pytest.raises(codecs.CannotReachError, match=r"jpeg420.*0\.01 bpp.*lowest rate"):
    create.create_study(made["paths"][:1], [codecs.ClassicalStudyCodec(classical.get_codec(n))
                                            for n in CODECS[:2]], [0.01], str(tmp_path / "s"),
                        progress=False, log=lambda _: None)
  assert not os.path.exists(tmp_path / "s")
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".study-")]


class JPEGWithRateControl:
  """A variable-rate codec for the tests: JPEG whose quality is bisected to a
  requested rate -- what `encode(image, bpp=target)` of our variable-rate
  models offers. `overshoot` returns more than asked, to test the retries."""

  def __init__(self, overshoot=1.0):
    self.jpeg, self.overshoot, self.requests = classical.get_codec("jpeg420"), overshoot, []

  def encode(self, image, bpp=None):
    self.requests.append(bpp)
    pixels = image.shape[0] * image.shape[1]
    low, high = 1, 95
    while low < high:
      middle = (low + high + 1) // 2
      if 8 * len(self.jpeg.encode(image, middle)) / pixels <= bpp * self.overshoot:
        low = middle
      else:
        high = middle - 1
    return self.jpeg.encode(image, low)

  def decode(self, data):
    return self.jpeg.decode(data, None)


def test_learned_codec_with_rate_control_is_asked_for_the_target(made, tmp_path):
  model = JPEGWithRateControl()
  learned = codecs.LearnedStudyCodec("ours", ["variable-rate-model"], loader=lambda p: model)
  assert learned.rate_control and "rate control" in learned.method
  manifest = create.create_study(
      made["paths"][:2], [codecs.ClassicalStudyCodec(classical.get_codec("webp")), learned],
      TARGETS, str(tmp_path / "s"), sentinels=0, progress=False, log=lambda _: None)
  ours = [s for s in manifest["stimuli"] if s["codec"] == "ours"]
  assert len(ours) == 2 * len(TARGETS)
  assert all(s["bpp"] <= s["target_bpp"] and "@bpp=" in s["setting"] for s in ours)
  assert sorted(set(model.requests)) == TARGETS  # asked once per image and target
  # A model that overshoots is asked again, lower; one that always does is an error.
  greedy = JPEGWithRateControl(overshoot=1.3)
  coded = codecs.LearnedStudyCodec("g", ["m"], loader=lambda p: greedy).code(
      {"x": _load(made["paths"][0])}, [1.0])
  assert coded[("x", 1.0)].bpp <= 1.0 and len(greedy.requests) > 1
  hopeless = JPEGWithRateControl(overshoot=100.0)
  with pytest.raises(codecs.CannotReachError, match="rate control gave"):
    codecs.LearnedStudyCodec("h", ["m"], loader=lambda p: hopeless).code(
        {"x": _load(made["paths"][0])}, [0.5])


def _load(path):
  from dpc_tf.images import read_image
  return read_image(path, alpha="composite")


@pytest.mark.slow
def test_fixed_rate_models_are_swept(made, saved_models):
  """Tiny untrained models saved with dpc_tf.save_model, loaded by dpc_tf.load_codec."""
  image = _load(made["paths"][0])
  paths = [str(saved_models["factorized"]), str(saved_models["hyperprior"])]
  learned = codecs.LearnedStudyCodec("ours", paths)
  assert not learned.rate_control and "fixed-rate" in learned.method
  rates = {p: 8 * len(learned._load(p).encode(image)) / image[..., 0].size for p in paths}
  low, high = sorted(rates, key=rates.get)
  targets = [(rates[low] + rates[high]) / 2, rates[high] + 0.01]
  coded = learned.code({"astronaut": image}, targets)
  assert coded[("astronaut", targets[0])].setting == low
  assert coded[("astronaut", targets[1])].setting == high
  decoded = learned.decode(coded[("astronaut", targets[1])])
  assert decoded.shape == image.shape and decoded.dtype == np.uint8
  with pytest.raises(codecs.CannotReachError, match="no model codes"):
    learned.code({"astronaut": image}, [rates[low] / 2])


def _client(made, tmp_path):
  study, path, conn, tokens = _fresh_db(made, tmp_path)
  app = server.create_app(made["folder"], path)
  return app.test_client(), conn, tokens, study


def _count(conn):
  return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


def test_web_app_stores_answers_and_refuses_bad_input(made, tmp_path):
  client, conn, (token, other), study = _client(made, tmp_path)
  assert client.get("/").status_code == 401
  for bad in ("nottoken", "A" * 22, other[:-1] + ("x" if other[-1] != "x" else "y")):
    response = client.get(f"/s/{bad}/api/state")
    assert response.status_code == 403 and "invite link is not valid" in response.json["error"]
    assert client.post(f"/s/{bad}/api/answer", json={"trial": "t0001", "choice": "left",
                                                     "response_ms": 5}).status_code == 403
  page = client.get(f"/s/{token}/")
  assert page.status_code == 200 and b"Which image is closer" in page.data
  assert "nonce-" in page.headers["Content-Security-Policy"]
  state = client.get(f"/s/{token}/api/state").json
  trial = state["trial"]
  assert state["done"] == 0 and state["total"] == len(study.trials)
  for key in ("reference", "left", "right"):
    image = client.get(f"/s/{token}/{trial[key]}")
    assert image.status_code == 200 and image.data[:8] == b"\x89PNG\r\n\x1a\n"
  # Path traversal and files outside the manifest: never served.
  for name in ("..%2fstudy.json", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2fstudy.json",
               "study.json", "responses.sqlite", "0123456789abcdef.png",
               trial["left"][4:].upper()):
    response = client.get(f"/s/{token}/img/{name}")
    assert response.status_code == 404, name
    assert b"SQLite format" not in response.data and b'"trials"' not in response.data
  response = client.get(f"/s/{token}/img/../../study.json")
  assert response.status_code in (308, 404) and b'"trials"' not in response.data

  def post(body, who=token):
    return client.post(f"/s/{who}/api/answer", json=body)

  refused = [
      ({"trial": "t9999", "choice": "left", "response_ms": 10}, 400, "not one of"),
      ({"trial": trial["id"], "choice": "up", "response_ms": 10}, 400, "choice"),
      ({"trial": trial["id"], "choice": "left", "response_ms": -1}, 400, "response_ms"),
      ({"trial": trial["id"], "choice": "left", "response_ms": "fast"}, 400, "response_ms"),
      ({"trial": trial["id"], "choice": "left"}, 400, "response_ms"),
  ]
  second = db.current_trial(conn, 1, mark_served=False)  # rater 1 is `token`
  later = study.sequence(0)[1].trial_id
  refused.append(({"trial": later, "choice": "left", "response_ms": 10}, 409, "not the current"))
  for body, status, text in refused:
    response = post(body)
    assert response.status_code == status and text in response.json["error"], body
  assert client.post(f"/s/{token}/api/answer", data="not json").status_code == 400
  assert _count(conn) == 0
  response = post({"trial": trial["id"], "choice": "right", "response_ms": 1234})
  assert response.status_code == 200 and response.json["done"] == 1
  replay = post({"trial": trial["id"], "choice": "left", "response_ms": 1})
  assert replay.status_code == 409 and "already answered" in replay.json["error"]
  rows = conn.execute("SELECT * FROM answers").fetchall()
  assert len(rows) == 1
  row = rows[0]
  assert (row["trial_id"], row["choice"], row["response_ms"]) == (trial["id"], "right", 1234)
  assert row["right_stimulus"] == second["right_stimulus"] == row["chosen_stimulus"]
  assert study.stimuli[row["left_stimulus"]]["file"] == trial["left"][4:]
  # The other rater's progress is their own.
  assert client.get(f"/s/{other}/api/state").json["done"] == 0


def test_serving_a_folder_with_a_missing_image_fails_clearly(made, tmp_path):
  import shutil
  folder = str(tmp_path / "copy")
  shutil.copytree(made["folder"], folder)
  study = study_lib.Study(folder)
  path = str(tmp_path / "db.sqlite")
  db.create(path, study.study_id).close()
  os.remove(os.path.join(folder, "images", made["manifest"]["references"][0]["file"]))
  with pytest.raises(study_lib.StudyError, match="missing"):
    server.create_app(folder, path)
  other = str(tmp_path / "other.sqlite")
  db.create(other, "0" * 16).close()
  with pytest.raises(db.DatabaseError, match="not of this study"):
    server.create_app(made["folder"], other)


def test_concurrent_raters_over_http_lose_and_duplicate_nothing(made, tmp_path):
  study, path, conn, tokens = _fresh_db(made, tmp_path, raters=3)
  descriptors = set(os.listdir("/proc/self/fd"))
  srv = server.make_server(server.create_app(made["folder"], path), port=0, threads=4)
  assert srv.effective_host == "127.0.0.1"
  base = f"http://127.0.0.1:{srv.effective_port}"
  statuses = collections.Counter()
  lock = threading.Lock()

  def call(url, body=None):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.load(response)
    except urllib.error.HTTPError as e:
      return e.code, json.load(e)

  def rater(token, choice):
    while True:
      _, state = call(f"{base}/s/{token}/api/state")
      if state["trial"] is None:
        return
      body = {"trial": state["trial"]["id"], "choice": choice, "response_ms": 50}
      # Each answer is sent twice at once: exactly one may be stored.
      results = []
      twins = [threading.Thread(target=lambda: results.append(
          call(f"{base}/s/{token}/api/answer", body)[0])) for _ in range(2)]
      for t in twins:
        t.start()
      for t in twins:
        t.join()
      with lock:
        statuses.update(results)

  with server.serving_in_background(srv):
    workers = [threading.Thread(target=rater, args=(t, c))
               for t, c in zip(tokens, ("left", "right", "left"))]
    for w in workers:
      w.start()
    for w in workers:
      w.join(timeout=120)
  # Stopped for good: no thread left serving, the port no longer answers.
  assert not [t for t in threading.enumerate() if t.name == "dpc-study-server"]
  with pytest.raises(OSError):
    urllib.request.urlopen(f"{base}/s/{tokens[0]}/api/state", timeout=5)
  total = len(study.trials)
  assert statuses[200] == 3 * total and statuses[409] == 3 * total
  rows = conn.execute("SELECT rater_id, trial_id, choice FROM answers").fetchall()
  assert len(rows) == 3 * total == len({(r[0], r[1]) for r in rows})
  assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
  # Every socket, pipe and database file the server opened is closed again
  # (SQLite holds a closed connection's file open while another connection
  # to the file, here `conn`, still has it locked).
  conn.close()
  assert set(os.listdir("/proc/self/fd")) <= descriptors


def test_wilson_and_bradley_terry():
  low, high = analysis.wilson(8, 10)
  assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
  assert analysis.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
  rng = np.random.default_rng(0)
  truth = np.array([0.0, 0.7, -1.2, 1.5])
  first = rng.integers(0, 4, 6000)
  second = (first + rng.integers(1, 4, 6000)) % 4
  first_won = rng.random(6000) < 1 / (1 + np.exp(truth[second] - truth[first]))
  scale = analysis.bradley_terry(first, second, first_won, 4)
  assert scale - scale[0] == pytest.approx(truth, abs=0.12)
  # A codec that wins everything stays finite.
  assert np.isfinite(analysis.bradley_terry([0, 0], [1, 1], [True, True], 2)).all()


def test_report_holds_exactly_the_answers_and_screens_raters(made, tmp_path):
  study, path, conn, _ = _fresh_db(made, tmp_path, raters=0)
  simulate.simulate(study, conn, attentive=3, inattentive=0, noise_db=0.5, seed=1)
  # A careless rater: always the wrong side of sentinels, left otherwise.
  (_, label, token), = db.add_raters(conn, study, 1, "careless")
  rater = db.rater_for_token(conn, token)
  while (current := db.current_trial(conn, rater["id"])) is not None:
    trial = study.trials[current["trial_id"]]
    choice = "left"
    if trial["kind"] == "sentinel":
      choice = "right" if current["left_stimulus"] == trial["expected"] else "left"
    db.record_answer(conn, rater["id"], trial["id"], choice, 100)
  out = str(tmp_path / "report")
  summary = report.make_report(made["folder"], path, out, samples=200)
  total = _count(conn)
  assert summary["answers"] == total == 4 * len(study.trials)
  with open(os.path.join(out, "report.md")) as f:
    assert summary["simulated"] and report.SIMULATED_BANNER in f.read()
  raters = {r["rater"]: r for r in summary["raters"]}
  assert not raters[label]["kept"] and "sentinel accuracy 0.00" in raters[label]["reason"]
  assert sum(r["kept"] for r in raters.values()) == 3
  import csv
  answers = list(csv.DictReader(open(os.path.join(out, "answers.csv"))))
  assert len(answers) == total
  stored = {(r["label"], r["trial_id"], r["choice"]) for r in db.answers(conn)}
  assert {(a["rater"], a["trial"], a["choice"]) for a in answers} == stored
  tests_kept = sum(a["kind"] == "test" and a["rater_kept"] == "True" for a in answers)
  assert sum(p["n"] for p in summary["preferences"]) == tests_kept == summary["test_answers_kept"]
  for p in summary["preferences"]:
    assert p["wilson_low"] <= p["preference_a"] <= p["wilson_high"]
  scales = [s for s in summary["scales"] if s["codec"] == "jpeg420"]
  assert all(s["scale"] == 0 for s in scales)
  for name in ("preferences.csv", "scale.csv", "raters.csv", "report.json",
               "preference_vs_bpp.png", "scale_vs_bpp.svg"):
    assert os.path.getsize(os.path.join(out, name)) > 0


def test_cli_create_report_and_errors(made, tmp_path, capsys):
  from dpc_tf import cli
  folder = str(tmp_path / "s")
  assert cli.main(["study", "create", *made["paths"][:2], "--out", folder, "--codecs",
                   "jpeg420,webp", "--bpp", "1.0", "--raters", "2", "--no-progress"]) == 0
  out = capsys.readouterr()
  assert out.out.count("/s/") == 2 and "rater-2" in out.out
  with open(os.path.join(folder, "invites.csv")) as f:
    invites = f.read().splitlines()
  assert len(invites) == 3
  assert os.stat(os.path.join(folder, "invites.csv")).st_mode & 0o777 == 0o600
  assert cli.main(["study", "invite", folder, "-n", "1", "--base-url", "https://x.org/st"]) == 0
  assert "rater-3: https://x.org/st/s/" in capsys.readouterr().out
  assert cli.main(["study", "simulate", folder, "--attentive", "1", "--inattentive", "0"]) == 0
  assert cli.main(["study", "report", folder]) == 0
  assert "SIMULATED RATERS" in capsys.readouterr().out
  for argv, text in [
      (["create", made["paths"][0], "--out", str(tmp_path / "x"), "--codecs", "jpeg420,webp",
        "--bpp", "fast"], "--bpp expects"),
      (["create", str(tmp_path / "nope.png"), "--out", str(tmp_path / "x"), "--codecs",
        "jpeg420,webp", "--bpp", "1"], "no such image"),
      (["create", made["paths"][0], "--out", folder, "--codecs", "jpeg420,webp", "--bpp", "1"],
       "not empty"),
      (["create", made["paths"][0], "--out", str(tmp_path / "x"), "--codecs", "jpeg420",
        "--bpp", "1"], "at least two"),
      (["serve", str(tmp_path)], "not a study folder"),
      (["report", folder, "--db", str(tmp_path / "none.sqlite")], "no such database"),
      (["report", folder, "--anchor", "bpg"], "not a codec"),
  ]:
    assert cli.main(["study", *argv]) == 2, argv
    assert text in capsys.readouterr().err, argv
