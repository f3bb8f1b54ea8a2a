"""`dpc study`: a two-alternative forced-choice (2AFC) study of codecs with people.

    dpc study create ../shared/data/kodak/kodim0[1-6].png --out mystudy \\
        --codecs jpeg420,webp,hevc444 --model ours=runs/hp/model \\
        --bpp 0.125,0.25,0.5 --raters 12 --seed 1
    dpc study invite mystudy -n 3              # more raters (prints their links)
    dpc study serve mystudy                    # http://127.0.0.1:8000/s/TOKEN/
    dpc study report mystudy --out mystudy/report
    dpc study simulate mystudy                 # SIMULATED raters, to try the report

`create` codes each reference image with every codec at the setting closest
to each target rate without exceeding it, writes the decoded PNGs, the
manifest and the plan, and (with --raters) the database with invite links.
`serve` binds 127.0.0.1 unless --host says otherwise. See README "Human study".
"""

import argparse
import csv
import os
import sys

from dpc_tf.study import study as study_lib


def _db_path(args):
  return args.db or os.path.join(args.study, study_lib.DEFAULT_DB)


def _invites_path(db_path):
  return os.path.join(os.path.dirname(os.path.abspath(db_path)), "invites.csv")


def add_arguments(parser):
  sub = parser.add_subparsers(dest="study_verb", metavar="ACTION", required=True)

  p = sub.add_parser("create", help="code the images and write a study folder")
  p.add_argument("images", nargs="+",
                 help="reference images: files, directories or quoted glob patterns")
  p.add_argument("--out", required=True, help="the study folder to create (new or empty)")
  p.add_argument("--codecs", default="",
                 help="comma-separated classical codecs of `dpc eval --list-codecs`, e.g. "
                      "jpeg420,jpeg2000,webp,hevc444,avif,jpegxl")
  p.add_argument("--model", action="append", default=[], metavar="NAME=PATH[,PATH...]",
                 help="a learned codec: one variable-rate model (rate control finds the "
                      "setting) or a family of fixed-rate models (repeatable)")
  p.add_argument("--bpp", required=True,
                 help="comma-separated target rates in bits per pixel, e.g. 0.125,0.25,0.5")
  p.add_argument("--seed", type=int, default=0, help="seed of the randomized plan")
  p.add_argument("--sentinels", type=int, default=None,
                 help="sentinel trials (default: a tenth of a rater's trials, at least 2; "
                      "0 for none)")
  p.add_argument("--sentinel-codec", default="jpeg420",
                 help="the clearly worse side of sentinels (default jpeg420)")
  p.add_argument("--sentinel-factor", type=float, default=0.25,
                 help="its rate as a fraction of the target (default 0.25)")
  p.add_argument("--trials-per-rater", type=int, default=None,
                 help="test trials per rater (default: all); raters cover the plan in turn")
  p.add_argument("--raters", type=int, default=0,
                 help="invite this many raters: creates the database and invites.csv")
  p.add_argument("--db", default=None, help="the database (default STUDY/responses.sqlite)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.set_defaults(study_run=_run_create)

  p = sub.add_parser("invite", help="add raters; prints and saves their invite links")
  p.add_argument("study")
  p.add_argument("-n", "--count", type=int, required=True, help="how many raters")
  p.add_argument("--label", default="rater", help="name prefix of the raters")
  p.add_argument("--db", default=None)
  p.add_argument("--base-url", default="http://127.0.0.1:8000/",
                 help="public address of the server, for the printed links")
  p.set_defaults(study_run=_run_invite)

  p = sub.add_parser("serve", help="serve the rating page (waitress)")
  p.add_argument("study")
  p.add_argument("--db", default=None)
  p.add_argument("--host", default="127.0.0.1",
                 help="address to bind (default 127.0.0.1: local only; put a reverse proxy "
                      "in front for remote raters)")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
  p.add_argument("--url-prefix", default="",
                 help="path prefix the reverse proxy forwards, e.g. /study")
  p.add_argument("--trusted-proxy", default=None,
                 help="address of the reverse proxy whose X-Forwarded-* headers to trust")
  p.add_argument("--title", default="Image comparison", help="title of the page")
  p.set_defaults(study_run=_run_serve)

  p = sub.add_parser("report", help="statistics, plots and CSV files of the answers")
  p.add_argument("study")
  p.add_argument("--db", default=None)
  p.add_argument("--out", default=None, help="output folder (default STUDY/report)")
  p.add_argument("--threshold", type=float, default=0.75,
                 help="minimum sentinel accuracy of a kept rater (default 0.75)")
  p.add_argument("--min-sentinels", type=int, default=1,
                 help="sentinel answers a rater needs to be kept (default 1)")
  p.add_argument("--anchor", default=None, help="codec at scale 0 (default: the first)")
  p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap samples")
  p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
  p.set_defaults(study_run=_run_report)

  p = sub.add_parser("simulate", help="add SIMULATED raters (PSNR-driven), to try the report")
  p.add_argument("study")
  p.add_argument("--db", default=None)
  p.add_argument("--attentive", type=int, default=4)
  p.add_argument("--inattentive", type=int, default=1)
  p.add_argument("--noise-db", type=float, default=1.0,
                 help="Thurstone noise of a simulated rater, in dB of PSNR")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(study_run=_run_simulate)
  return parser


def _expand(images):
  from dpc_tf.evaluation.cli import expand_images
  paths = expand_images(images)
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ValueError(f"no such image file: {missing[0]}" +
                     (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  return paths


def _targets(text):
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"--bpp expects comma-separated numbers, got {text!r}.") from None
  if not values or min(values) <= 0:
    raise ValueError(f"--bpp expects positive rates, got {text!r}.")
  return values


def _run_create(args):
  from dpc_tf.study import codecs, create, db
  names = [n.strip() for n in args.codecs.split(",") if n.strip()]
  study_codecs = codecs.build(names, args.model)
  manifest = create.create_study(
      _expand(args.images), study_codecs, _targets(args.bpp), args.out, seed=args.seed,
      sentinels=args.sentinels, sentinel_codec=args.sentinel_codec,
      sentinel_factor=args.sentinel_factor, trials_per_rater=args.trials_per_rater,
      progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
  tests = sum(t["kind"] == "test" for t in manifest["trials"])
  print(f"{args.out}: {len(manifest['references'])} images, {len(manifest['stimuli'])} stimuli, "
        f"{tests} test and {len(manifest['trials']) - tests} sentinel trials "
        f"(study {manifest['study_id']}).")
  for note in manifest["notes"]:
    print(f"note: {note}", file=sys.stderr)
  db_path = _db_path(argparse.Namespace(study=args.out, db=args.db))
  conn = db.create(db_path, manifest["study_id"])
  conn.close()
  if args.raters:
    return _invite(args.out, db_path, args.raters, "rater", "http://127.0.0.1:8000/")
  return 0


def _invite(folder, db_path, count, label, base_url):
  from dpc_tf.study import db
  if count < 1:
    raise ValueError(f"the number of raters must be at least 1, got {count}.")
  study = study_lib.Study(folder, verify=False)
  conn = db.open_existing(db_path, study.study_id)
  try:
    invited = db.add_raters(conn, study, count, label)
  finally:
    conn.close()
  path = _invites_path(db_path)
  new = not os.path.exists(path)
  # Invite links are secrets: only the owner may read the file.
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
  with os.fdopen(fd, "a", newline="") as f:
    writer = csv.writer(f)
    if new:
      writer.writerow(["rater", "token", "path"])
    for _, name, token in invited:
      writer.writerow([name, token, f"/s/{token}/"])
  base = base_url.rstrip("/")
  for _, name, token in invited:
    print(f"{name}: {base}/s/{token}/")
  print(f"Invite links appended to {path} (keep it private).", file=sys.stderr)
  return 0


def _run_invite(args):
  return _invite(args.study, _db_path(args), args.count, args.label, args.base_url)


def _run_serve(args):
  from dpc_tf.study import server
  app = server.create_app(args.study, _db_path(args), title=args.title)
  srv = server.make_server(app, host=args.host, port=args.port, threads=args.threads,
                           url_prefix=args.url_prefix, trusted_proxy=args.trusted_proxy)
  host = args.host if ":" not in args.host else f"[{args.host}]"
  print(f"dpc study: serving {args.study} on http://{host}:{srv.effective_port}"
        f"{args.url_prefix}/s/TOKEN/ (invite links: `dpc study invite`); Ctrl-C stops.",
        file=sys.stderr, flush=True)
  try:
    srv.run()
  finally:
    srv.close()
  return 0


def _run_report(args):
  from dpc_tf.study import report
  out = args.out or os.path.join(args.study, "report")
  summary = report.make_report(args.study, _db_path(args), out, threshold=args.threshold,
                               min_sentinels=args.min_sentinels, anchor=args.anchor,
                               samples=args.bootstrap, seed=args.seed)
  with open(os.path.join(out, "report.md")) as f:
    print(f.read())
  print(f"Wrote report.md, report.json, CSV files and plots to {out}", file=sys.stderr)
  return 0 if summary["answers"] else 1


def _run_simulate(args):
  from dpc_tf.study import db, simulate
  study = study_lib.Study(args.study)
  conn = db.open_existing(_db_path(args), study.study_id)
  try:
    labels = simulate.simulate(study, conn, args.attentive, args.inattentive, args.noise_db,
                               args.seed)
  finally:
    conn.close()
  print(f"Added {len(labels)} SIMULATED raters ({', '.join(labels)}); their answers are "
        "labelled simulated in the report.")
  return 0


def run(args):
  """Runs a `dpc study` action; 2 on bad input with the reason on stderr."""
  from dpc_tf.study.db import DatabaseError
  try:
    return args.study_run(args)
  except (ValueError, DatabaseError, RuntimeError, OSError) as error:
    print(f"dpc study {args.study_verb}: error: {error}", file=sys.stderr)
    return 2


def main(argv=None):
  parser = add_arguments(argparse.ArgumentParser(
      prog="dpc study", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter))
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
