"""`dpc study serve` in a real headless browser: two raters at once.

Debian's `chromium` and `chromium-driver` (installed by .ci/run) are driven
with Selenium. Without them the test is skipped locally and fails under CI.
"""

import csv
import os
import shutil
import threading

import pytest

pytest.importorskip("flask", reason="`dpc study` needs the study extra (pip install '.[study]')")
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="needs selenium (requirements/test.txt)")

from dpc_tf.study import codecs, create, db, report, server  # noqa: E402
from dpc_tf.study import study as study_lib  # noqa: E402
from dpc_tf.evaluation import codecs as classical  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser():
  if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    message = ("needs Debian's chromium and chromium-driver (apt-get install chromium "
               "chromium-driver; .ci/run installs them)")
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--window-size=1280,760", "--disable-extensions"):
    options.add_argument(argument)
  # An explicit driver path: Selenium Manager would otherwise try to download one.
  return webdriver.Chrome(service=Service(DRIVER), options=options)


def _photos(folder):
  from skimage import data
  from dpc_tf.images import write_image
  import numpy as np
  paths = []
  for name, crop in {"astronaut": data.astronaut()[:256, 64:448],
                     "coffee": data.coffee()[60:316, 100:484]}.items():
    paths.append(os.path.join(folder, f"{name}.png"))
    write_image(paths[-1], np.ascontiguousarray(crop))
  return paths


class Rater:
  """One person at one browser: answers every trial with the keyboard."""

  def __init__(self, url, policy, screenshot=None, leave_after=None):
    self.url, self.policy, self.screenshot, self.leave_after = url, policy, screenshot, leave_after
    self.answers, self.error, self.welcomed_back = [], None, False

  def run(self):
    try:
      self._run()
    except BaseException as e:  # Reported by the test thread.
      self.error = e

  def _wait(self, driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)

  def _start(self, driver):
    from selenium.webdriver.common.by import By
    driver.get(self.url)
    self._wait(driver, lambda d: d.find_element(By.ID, "start").is_displayed()
               or d.find_element(By.ID, "end").is_displayed())
    if driver.find_element(By.ID, "start").is_displayed():
      if "Welcome back" in driver.find_element(By.ID, "resume").text:
        self.welcomed_back = True
      driver.find_element(By.ID, "start").click()

  def _run(self):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.common.action_chains import ActionChains
    driver = _browser()
    try:
      self._start(driver)
      previous = None
      while True:
        trial = self._wait(driver, lambda d: (
            "end" if d.find_element(By.ID, "end").is_displayed() else
            (d.execute_script("return document.body.dataset.trial || null") or False)))
        if trial == "end":
          break
        if trial == previous:
          raise AssertionError(f"trial {trial} was shown twice")
        if self.screenshot and not self.answers:
          driver.save_screenshot(self.screenshot)
          # The viewing aids work: zoom, flicker, reference.
          ActionChains(driver).send_keys("z").perform()
          assert "2×" in driver.find_element(By.ID, "zoom").text
          ActionChains(driver).send_keys("z").send_keys("z").send_keys("f").perform()
          self._wait(driver, lambda d: "showref" in d.find_element(By.ID, "trial")
                     .get_attribute("class"))
          ActionChains(driver).send_keys("f").perform()
        choice = self.policy(len(self.answers))
        if choice == "click-right":
          driver.find_element(By.ID, "choose-right").click()
          choice = "right"
        else:
          ActionChains(driver).send_keys(Keys.ARROW_LEFT if choice == "left"
                                         else Keys.ARROW_RIGHT).perform()
        self.answers.append((trial, choice))
        previous = trial
        if self.leave_after and len(self.answers) == self.leave_after:
          # Leave (close the page) and come back with the same link.
          self._wait(driver, lambda d: d.execute_script(
              "return document.body.dataset.trial || null") not in (None, trial)
              or d.find_element(By.ID, "end").is_displayed())
          driver.get("about:blank")
          self._start(driver)
      self.total = driver.find_element(By.ID, "end-count").text
    finally:
      driver.quit()


@pytest.mark.slow
def test_two_raters_in_real_browsers(tmp_path):
  paths = _photos(str(tmp_path))
  folder = str(tmp_path / "study")
  create.create_study(paths, [codecs.ClassicalStudyCodec(classical.get_codec(n))
                              for n in ("jpeg420", "webp", "jpeg2000")], [0.4, 0.8], folder,
                      seed=3, progress=False, log=lambda _: None)
  study = study_lib.Study(folder)
  db_path = str(tmp_path / "answers.sqlite")
  conn = db.create(db_path, study.study_id)
  (_, first, token1), (_, second, token2) = db.add_raters(conn, study, 2)
  srv = server.make_server(server.create_app(folder, db_path), port=0, threads=4)
  assert srv.effective_host == "127.0.0.1"
  base = f"http://127.0.0.1:{srv.effective_port}"
  screenshot = str(tmp_path / "trial.png")
  raters = [Rater(f"{base}/s/{token1}/", lambda i: "left" if i % 2 == 0 else "right",
                  screenshot=screenshot, leave_after=5),
            Rater(f"{base}/s/{token2}/", lambda i: "click-right" if i == 3 else "right")]
  with server.serving_in_background(srv):
    threads = [threading.Thread(target=r.run) for r in raters]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=400)
  for r in raters:
    if r.error:
      raise r.error
  total = len(study.trials)
  assert raters[0].welcomed_back and raters[0].total == str(total)
  assert os.path.getsize(screenshot) > 10000
  print(f"screenshot of a trial page: {screenshot}")

  # The database holds exactly what was pressed, no more, no less.
  expected = {(first, t, c) for t, c in raters[0].answers} | {
      (second, t, c) for t, c in raters[1].answers}
  assert len(raters[0].answers) == len(raters[1].answers) == total
  stored = [(r["label"], r["trial_id"], r["choice"]) for r in db.answers(conn)]
  assert len(stored) == 2 * total and set(stored) == expected
  for row in db.answers(conn):
    assert row["response_ms"] >= 0 and row["answered_at"]

  summary = report.make_report(folder, db_path, str(tmp_path / "report"), samples=100,
                               min_sentinels=0, threshold=0)
  with open(tmp_path / "report" / "answers.csv") as f:
    reported = {(a["rater"], a["trial"], a["choice"]) for a in csv.DictReader(f)}
  assert reported == expected and summary["answers"] == 2 * total
  tests = sum(study.trials[t]["kind"] == "test" for _, t, _ in expected)
  assert sum(p["n"] for p in summary["preferences"]) == tests
