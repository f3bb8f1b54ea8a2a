"""The responses database: SQLite in WAL mode, one row per answer.

Schema (version 1):

    meta(key TEXT PRIMARY KEY, value TEXT)
        schema_version, study_id (the plan the answers refer to), created
    raters(id INTEGER PRIMARY KEY, token_sha256 TEXT UNIQUE, label TEXT,
           kind TEXT 'human'|'simulated', number INTEGER UNIQUE, created TEXT)
        number: the rater's index in the plan (which trials, which sides);
        only a hash of the invite token is stored
    assignments(rater_id, position, trial_id, left_stimulus, right_stimulus,
                first_served TEXT)
        PRIMARY KEY (rater_id, position), UNIQUE (rater_id, trial_id):
        what each rater is shown, in order, written when the rater is invited
    answers(id INTEGER PRIMARY KEY, rater_id, trial_id, position,
            left_stimulus, right_stimulus, choice TEXT 'left'|'right',
            chosen_stimulus, response_ms INTEGER, answered_at TEXT)
        UNIQUE (rater_id, trial_id) and UNIQUE (rater_id, position)

Times are UTC ISO 8601 with milliseconds. An answer is stored in one
`BEGIN IMMEDIATE` transaction that checks, then inserts: the trial must be
the rater's current one (the first unanswered position), so a forged trial id,
an answer out of order or a replay is refused and nothing is written; the
unique keys make a duplicate impossible even if that check were bypassed.
WAL lets the server's threads read while one writes; writers queue on the
database lock (busy timeout) instead of failing.
"""

import datetime
import hashlib
import os
import secrets
import sqlite3

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
  id INTEGER PRIMARY KEY,
  token_sha256 TEXT NOT NULL UNIQUE,
  label TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('human', 'simulated')),
  number INTEGER NOT NULL UNIQUE,
  created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
  rater_id INTEGER NOT NULL REFERENCES raters(id),
  position INTEGER NOT NULL,
  trial_id TEXT NOT NULL,
  left_stimulus TEXT NOT NULL,
  right_stimulus TEXT NOT NULL,
  first_served TEXT,
  PRIMARY KEY (rater_id, position),
  UNIQUE (rater_id, trial_id));
CREATE TABLE IF NOT EXISTS answers (
  id INTEGER PRIMARY KEY,
  rater_id INTEGER NOT NULL REFERENCES raters(id),
  trial_id TEXT NOT NULL,
  position INTEGER NOT NULL,
  left_stimulus TEXT NOT NULL,
  right_stimulus TEXT NOT NULL,
  choice TEXT NOT NULL CHECK (choice IN ('left', 'right')),
  chosen_stimulus TEXT NOT NULL,
  response_ms INTEGER NOT NULL CHECK (response_ms >= 0),
  answered_at TEXT NOT NULL,
  UNIQUE (rater_id, trial_id),
  UNIQUE (rater_id, position),
  FOREIGN KEY (rater_id, position) REFERENCES assignments(rater_id, position));
"""

# A response time above this is a rater who left the page; the client sends
# milliseconds, and anything outside [0, MAX] is a malformed request.
MAX_RESPONSE_MS = 24 * 3600 * 1000


class DatabaseError(ValueError):
  """The database is missing, of another study, or of another schema."""


class AnswerError(ValueError):
  """An answer that is not stored; `status` is the HTTP status to send."""

  def __init__(self, status, message):
    super().__init__(message)
    self.status = status


def now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def token_hash(token):
  return hashlib.sha256(token.encode()).hexdigest()


def connect(path):
  """A connection in autocommit mode (transactions are explicit)."""
  conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
  conn.row_factory = sqlite3.Row
  conn.execute("PRAGMA foreign_keys = ON")
  conn.execute("PRAGMA busy_timeout = 30000")
  return conn


def create(path, study_id):
  """Creates the database (WAL mode) for a study; refuses an existing file."""
  if os.path.exists(path):
    raise DatabaseError(f"{path} exists; answers are never overwritten. Choose another --db "
                        "or delete the file.")
  conn = connect(path)
  mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
  if mode != "wal":
    raise DatabaseError(f"{path}: SQLite refused WAL mode (got {mode!r}); put the database "
                        "on a local file system.")
  conn.executescript(_SCHEMA)
  with transaction(conn):
    conn.executemany("INSERT INTO meta VALUES (?, ?)",
                     [("schema_version", SCHEMA_VERSION), ("study_id", study_id),
                      ("created", now())])
  return conn


def open_existing(path, study_id):
  """Opens the database of study `study_id`, checking that it is that study's."""
  if not os.path.isfile(path):
    raise DatabaseError(f"{path}: no such database; `dpc study create --raters N` or "
                        "`dpc study invite` makes it.")
  conn = connect(path)
  try:
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
  except sqlite3.DatabaseError as e:
    raise DatabaseError(f"{path}: not a study database ({e}).") from None
  if meta.get("schema_version") != SCHEMA_VERSION:
    raise DatabaseError(f"{path}: schema version {meta.get('schema_version')!r}, this dpc "
                        f"reads {SCHEMA_VERSION}.")
  if meta.get("study_id") != study_id:
    raise DatabaseError(f"{path} holds answers of study {meta.get('study_id')}, not of this "
                        f"study ({study_id}); pass the right --db.")
  return conn


class transaction:
  """`with transaction(conn):` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

  def __init__(self, conn):
    self.conn = conn

  def __enter__(self):
    self.conn.execute("BEGIN IMMEDIATE")
    return self.conn

  def __exit__(self, kind, value, traceback):
    self.conn.execute("ROLLBACK" if kind else "COMMIT")
    return False


def add_raters(conn, study, count, label="rater", kind="human"):
  """Invites `count` raters: returns [(number, label, token)]. The tokens are
  shown only here; the database keeps their hashes."""
  invited = []
  with transaction(conn):
    (next_number,) = conn.execute("SELECT COALESCE(MAX(number) + 1, 0) FROM raters").fetchone()
    for number in range(next_number, next_number + count):
      token = secrets.token_urlsafe(16)
      name = f"{label}-{number + 1}"
      rater_id = conn.execute(
          "INSERT INTO raters (token_sha256, label, kind, number, created) VALUES (?, ?, ?, ?, ?)",
          (token_hash(token), name, kind, number, now())).lastrowid
      conn.executemany(
          "INSERT INTO assignments (rater_id, position, trial_id, left_stimulus, right_stimulus)"
          " VALUES (?, ?, ?, ?, ?)",
          [(rater_id, s.position, s.trial_id, s.left, s.right) for s in study.sequence(number)])
      invited.append((number, name, token))
  return invited


def rater_for_token(conn, token):
  """The raters row of an invite token, or None."""
  return conn.execute("SELECT * FROM raters WHERE token_sha256 = ?",
                      (token_hash(token),)).fetchone()


def progress(conn, rater_id):
  """(answered, total) for a rater."""
  total = conn.execute("SELECT COUNT(*) FROM assignments WHERE rater_id = ?",
                       (rater_id,)).fetchone()[0]
  done = conn.execute("SELECT COUNT(*) FROM answers WHERE rater_id = ?",
                      (rater_id,)).fetchone()[0]
  return done, total


def current_trial(conn, rater_id, mark_served=True):
  """The rater's first unanswered assignment (a Row), or None when done."""
  row = conn.execute(
      "SELECT a.* FROM assignments a WHERE a.rater_id = ? AND NOT EXISTS "
      "(SELECT 1 FROM answers x WHERE x.rater_id = a.rater_id AND x.position = a.position) "
      "ORDER BY a.position LIMIT 1", (rater_id,)).fetchone()
  if row is not None and mark_served and row["first_served"] is None:
    conn.execute("UPDATE assignments SET first_served = ? WHERE rater_id = ? AND position = ? "
                 "AND first_served IS NULL", (now(), rater_id, row["position"]))
  return row


def record_answer(conn, rater_id, trial_id, choice, response_ms):
  """Stores one answer atomically; raises `AnswerError` and stores nothing if
  the trial is not the rater's current one, was answered, or the input is bad."""
  if choice not in ("left", "right"):
    raise AnswerError(400, f"choice must be 'left' or 'right', got {choice!r}.")
  if (isinstance(response_ms, bool) or not isinstance(response_ms, (int, float))
      or not 0 <= response_ms <= MAX_RESPONSE_MS):
    raise AnswerError(400, f"response_ms must be a number of milliseconds in "
                           f"[0, {MAX_RESPONSE_MS}], got {response_ms!r}.")
  if not isinstance(trial_id, str):
    raise AnswerError(400, f"trial must be a trial id string, got {trial_id!r}.")
  with transaction(conn):
    assigned = conn.execute("SELECT * FROM assignments WHERE rater_id = ? AND trial_id = ?",
                            (rater_id, trial_id)).fetchone()
    if assigned is None:
      raise AnswerError(400, f"trial {trial_id!r} is not one of this rater's trials; "
                             "nothing was stored.")
    if conn.execute("SELECT 1 FROM answers WHERE rater_id = ? AND trial_id = ?",
                    (rater_id, trial_id)).fetchone():
      raise AnswerError(409, f"trial {trial_id} was already answered; the first answer "
                             "stands and this one was not stored.")
    current = current_trial(conn, rater_id, mark_served=False)
    if current["trial_id"] != trial_id:
      raise AnswerError(409, f"trial {trial_id} is not the current trial "
                             f"({current['trial_id']}); reload the page.")
    chosen = assigned["left_stimulus"] if choice == "left" else assigned["right_stimulus"]
    conn.execute(
        "INSERT INTO answers (rater_id, trial_id, position, left_stimulus, right_stimulus, "
        "choice, chosen_stimulus, response_ms, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (rater_id, trial_id, assigned["position"], assigned["left_stimulus"],
         assigned["right_stimulus"], choice, chosen, int(round(response_ms)), now()))


def answers(conn):
  """Every answer with its rater, in the order they were stored."""
  return conn.execute(
      "SELECT x.*, r.label, r.kind, r.number FROM answers x JOIN raters r ON r.id = x.rater_id "
      "ORDER BY x.id").fetchall()


def raters(conn):
  return conn.execute("SELECT * FROM raters ORDER BY number").fetchall()
