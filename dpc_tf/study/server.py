"""`dpc study serve`: the raters' web page, a Flask app on waitress.

Routes (TOKEN is a rater's invite token; without a valid one nothing of the
study is served and nothing is stored):

    GET  /s/TOKEN/              the page: instructions, trials, end page
    GET  /s/TOKEN/api/state     progress and the current trial (JSON)
    POST /s/TOKEN/api/answer    {"trial", "choice": "left"|"right", "response_ms"}
    GET  /s/TOKEN/img/FILE      an image of one of this rater's trials

Image names are looked up in the manifest's list, never joined to a path, so
no URL can reach a file outside the study's images. The page uses relative
URLs only, so the app works under any prefix behind a reverse proxy.
"""

import contextlib
import functools
import logging
import os
import re
import secrets
import threading

from dpc_tf.study import db as db_lib
from dpc_tf.study.study import Study

WEB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_FILE = re.compile(r"^[0-9a-f]{16}\.png$")
_log = logging.getLogger(__name__)


def _missing_flask():
  try:
    import flask  # pylint: disable=unused-import
    import waitress  # pylint: disable=unused-import
  except ImportError as e:
    raise RuntimeError(f"`dpc study serve` needs Flask and waitress ({e}); install them with "
                       "pip install -c requirements/constraints.txt -e '.[study]'.") from None


def create_app(study_folder, db_path, title="Image comparison"):
  """The WSGI app of a study. Checks the folder (every image present and
  unchanged) and the database (this study's) before serving anything."""
  _missing_flask()
  import flask

  study = Study(study_folder)
  db_lib.open_existing(db_path, study.study_id).close()
  with open(os.path.join(WEB, "study.js")) as f:
    script = f.read()
  with open(os.path.join(WEB, "study.css")) as f:
    style = f.read()
  app = flask.Flask(__name__, template_folder=WEB, static_folder=None)
  app.config["STUDY"] = study
  allowed = {}  # rater id -> image files of the rater's trials (assignments never change)
  allowed_lock = threading.Lock()

  def connection():
    if "db" not in flask.g:
      flask.g.db = db_lib.connect(db_path)
    return flask.g.db

  @app.teardown_appcontext
  def close(_):
    conn = flask.g.pop("db", None)
    if conn is not None:
      conn.close()

  def error(status, message):
    if "/api/" in flask.request.path:
      return flask.jsonify(error=message), status
    return flask.render_template("message.html", title=title, message=message,
                                 nonce=_nonce(), style=style), status

  def with_rater(view):
    @functools.wraps(view)
    def wrapped(token, **kwargs):
      rater = None
      if _TOKEN.match(token):
        rater = db_lib.rater_for_token(connection(), token)
      if rater is None:
        return error(403, "This invite link is not valid. Use the exact link you were given, "
                          "or ask the study's organiser for one.")
      return view(rater, **kwargs)
    return wrapped

  @app.after_request
  def headers(response):
    # Tokens are in URLs: never leak them through the Referer header.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    if response.mimetype != "image/png":
      response.headers["Cache-Control"] = "no-store"
    nonce = flask.g.get("nonce")
    if nonce:
      response.headers["Content-Security-Policy"] = (
          f"default-src 'none'; img-src 'self' data:; connect-src 'self'; "
          f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; base-uri 'none'; "
          "form-action 'none'; "
          "frame-ancestors 'none'")
    return response

  @app.get("/")
  def root():
    return error(401, "This is an image-comparison study. Open the personal invite link you "
                      "were given to take part.")

  @app.get("/s/<token>/")
  @with_rater
  def page(rater):
    return flask.render_template("page.html", title=title, nonce=_nonce(), style=style,
                                 script=script)

  @app.get("/s/<token>/api/state")
  @with_rater
  def state(rater):
    return flask.jsonify(_state(connection(), study, rater))

  @app.post("/s/<token>/api/answer")
  @with_rater
  def answer(rater):
    body = flask.request.get_json(silent=True)
    if not isinstance(body, dict):
      return error(400, "send a JSON object {trial, choice, response_ms}.")
    try:
      db_lib.record_answer(connection(), rater["id"], body.get("trial"), body.get("choice"),
                           body.get("response_ms"))
    except db_lib.AnswerError as e:
      return error(e.status, str(e))
    return flask.jsonify(_state(connection(), study, rater))

  @app.get("/s/<token>/img/<name>")
  @with_rater
  def image(rater, name):
    with allowed_lock:
      if rater["id"] not in allowed:
        allowed[rater["id"]] = _rater_files(connection(), study, rater["id"])
      files = allowed[rater["id"]]
    if not _FILE.match(name) or name not in files:
      return error(404, f"no image {name!r} in this study for you.")
    path = study.files[name]
    if not os.path.isfile(path):
      return error(500, f"the study folder lost image {name}; tell the study's organiser.")
    return flask.send_file(path, mimetype="image/png", max_age=3600, conditional=True)

  @app.errorhandler(404)
  def not_found(_):
    return error(404, "Not found.")

  @app.errorhandler(405)
  def not_allowed(_):
    return error(405, "Method not allowed.")

  return app


def _nonce():
  import flask
  if "nonce" not in flask.g:
    flask.g.nonce = secrets.token_urlsafe(16)
  return flask.g.nonce


def _rater_files(conn, study, rater_id):
  files = set()
  for row in conn.execute("SELECT * FROM assignments WHERE rater_id = ?", (rater_id,)):
    trial = study.trials[row["trial_id"]]
    files.add(study.reference_file(trial))
    files.add(study.stimuli[row["left_stimulus"]]["file"])
    files.add(study.stimuli[row["right_stimulus"]]["file"])
  return files


def _state(conn, study, rater):
  done, total = db_lib.progress(conn, rater["id"])
  current = db_lib.current_trial(conn, rater["id"])
  trial = None
  if current is not None:
    reference = study.references[study.trials[current["trial_id"]]["image"]]
    trial = {"id": current["trial_id"], "position": current["position"],
             "reference": "img/" + reference["file"],
             "left": "img/" + study.stimuli[current["left_stimulus"]]["file"],
             "right": "img/" + study.stimuli[current["right_stimulus"]]["file"],
             "width": reference["width"], "height": reference["height"]}
  return {"done": done, "total": total, "trial": trial}


def make_server(app, host="127.0.0.1", port=8000, threads=4, url_prefix="",
                trusted_proxy=None):
  """A waitress server (not yet running): `.run()`, `.close()`, `.effective_port`."""
  _missing_flask()
  import waitress.server
  # poll(), not select(): select cannot watch descriptors above 1023, which a
  # busy server (or a process with many files open) reaches.
  options = {"host": host, "port": port, "threads": threads, "url_prefix": url_prefix,
             "ident": "dpc-study", "asyncore_use_poll": True}
  if trusted_proxy:
    options.update(trusted_proxy=trusted_proxy, trusted_proxy_count=1,
                   trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto",
                                          "x-forwarded-host"})
  return waitress.server.create_server(app, **options)


@contextlib.contextmanager
def serving_in_background(srv, timeout=30):
  """Runs `srv` (from `make_server`) on a thread until the block ends.

  The loop stops on a flag it checks between polls, then closes its own
  sockets on its own thread: closing them from another thread while the loop
  waits in `poll` kills the loop with "bad file descriptor". Pulling
  waitress's trigger only wakes the loop sooner. An exception that ended the
  loop early is raised here, not lost with its thread.
  """
  from waitress import wasyncore
  stop, pulled = threading.Event(), threading.Event()
  failure = []
  sockets = srv._map  # pylint: disable=protected-access

  def serve():
    try:
      while sockets and not stop.is_set():
        wasyncore.loop(timeout=srv.adj.asyncore_loop_timeout, map=sockets,
                       use_poll=srv.adj.asyncore_use_poll, count=1)
    except BaseException as e:  # pylint: disable=broad-except  # Re-raised below.
      failure.append(e)
    finally:
      # The trigger is closed last: after the block's own pull and after the
      # worker threads' (each finishes its request first); a pull on a closed
      # trigger would write into whatever file reused its descriptor number.
      pulled.wait()
      srv.task_dispatcher.shutdown()
      wasyncore.close_all(sockets, ignore_all=True)

  thread = threading.Thread(target=serve, name="dpc-study-server", daemon=True)
  thread.start()
  try:
    yield srv
  finally:
    stop.set()
    try:
      srv.pull_trigger()
    except OSError as e:
      _log.warning("could not wake the study server's event loop (%s); it stops "
                   "within its poll timeout of %s s", e, srv.adj.asyncore_loop_timeout)
    finally:
      pulled.set()
    thread.join(timeout)
    if thread.is_alive():
      raise RuntimeError(f"the study server did not stop within {timeout} s")
    if failure:
      raise RuntimeError("the study server's event loop failed") from failure[0]
