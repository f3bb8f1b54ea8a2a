"""Model cards of the zoo: training history, learning-curve progress, README.

`tools/build_zoo.py` writes a card from a training run; these are its parts
that a card's reader (and the tests) rely on:

- `learning_rate_schedule(flags)`: the schedule a run's flags give.
- `curve_progress(curve)`: BD-rate between successive learning-curve points,
  and per CPU-hour (the issue's test of a flattened curve).
- `continue_history(previous, ...)`: the history of an entry whose training
  went on in a new run started from its shipped weights (e.g. after the last
  session's backups were lost): steps, CPU-hours and the curve go on from the
  card's, each stretch of training a phase.
- `card_markdown(card)`: the card's README, the same from the build's dicts
  and from the saved card.json.
"""

ANCHORS = ("jpeg420", "jpeg2000", "hevc444")


def learning_rate_schedule(flags):
  """The run's schedule as its flags give it (a resumed run may change it)."""
  schedule = flags.get("lr_schedule") or "constant"
  if schedule == "step":
    result = dict(schedule=schedule, boundaries=[
        int(b) for b in flags.get("lr_boundaries", "").split(",") if b],
                  decay_factor=float(flags.get("lr_decay_factor", 0.1)))
  elif schedule == "cosine":
    result = dict(schedule=schedule, decay_steps=int(flags.get("lr_decay_steps") or 0) or None,
                  final_fraction=float(flags.get("lr_final_fraction", 0.01)))
  else:
    result = dict(schedule=schedule)
  warmup = int(flags.get("lr_warmup_steps") or 0)
  if warmup:
    result["warmup_steps"] = warmup
  return result


CURVE_METRICS = (("psnr", True), ("msssim_db", True), ("lpips", False))


def curve_progress(curve):
  """BD-rate of each learning-curve point against the one before, per metric,
  and per CPU-hour between them: the issue's test of a flattened curve is
  under 1 % per CPU-hour (or 0.1 dB)."""
  from dpc_tf.evaluation import bdrate
  by_step = {}
  for row in curve:
    by_step.setdefault(int(row["step"]), []).append(row)
  steps = sorted(by_step)
  progress = []
  for before, after in zip(steps, steps[1:]):
    a, b = by_step[before], by_step[after]
    hours = (b[0]["cpu_hours"] or 0) - (a[0]["cpu_hours"] or 0)
    entry = dict(from_step=before, to_step=after, cpu_hours=hours, bd_rate={},
                 bd_rate_per_cpu_hour={})
    for metric, higher_is_better in CURVE_METRICS:
      if any(r.get(metric) is None for r in a + b):
        continue
      value = bdrate.bd_rate([r["bpp"] for r in a], [r[metric] for r in a],
                             [r["bpp"] for r in b], [r[metric] for r in b],
                             higher_is_better=higher_is_better).bd_rate
      if value == value:  # not NaN
        entry["bd_rate"][metric] = value
        if hours > 0:
          entry["bd_rate_per_cpu_hour"][metric] = value / hours
    progress.append(entry)
  return progress


def run_hardware(records, offset=0):
  """The machines of a run's hardware record (`training.read_hardware_record`)
  as one line, steps shifted by `offset`: "M" or "M1 from step 0, M2 from
  step 2750"; None without a record."""
  merged = []
  for record in records or []:
    if not merged or merged[-1]["hardware"] != record["hardware"]:
      merged.append(record)
  if len(merged) <= 1:
    return merged[0]["hardware"] if merged else None
  return ", ".join(f"{r['hardware']} from step {r['from_step'] + offset}"
                   for r in merged)


def continue_history(previous, steps, flags, curve, fingerprint_before,
                     hardware=None):
  """Training record and learning curve of a run that continued a zoo entry.

  `previous` is the card the run started from (its init_from.json), `steps`,
  `flags`, `curve` and `hardware` (its hardware record) the run's own,
  counted from 0. Returns (training
  fields, learning curve) on the entry's whole history: steps and CPU-hours
  go on from the card's, and each stretch of training is a phase with its
  learning rate (schedule boundaries in the entry's steps) and start.
  """
  before = previous["training"]
  offset, hours = int(before["steps"]), float(before.get("cpu_hours") or 0.0)
  phases = [dict(p) for p in before.get("phases") or [dict(
      steps=[0, offset], learning_rate=before.get("learning_rate"),
      learning_rate_schedule=before.get("learning_rate_schedule"),
      init_from=before.get("init_from"))]]
  # The card's batch and crop size were those of every phase so far; a phase
  # may change them (e.g. larger crops), so each phase keeps its own.
  for phase in phases:
    for key in ("batch_size", "patch_size"):
      if key in before:
        phase.setdefault(key, before[key])
  schedule = learning_rate_schedule(flags)
  if "boundaries" in schedule:
    schedule["boundaries"] = [b + offset for b in schedule["boundaries"]]
  phases.append(dict(
      steps=[offset, offset + steps], learning_rate=float(flags.get("learning_rate", 0)),
      learning_rate_schedule=schedule,
      precision=flags.get("precision_policy") or "float32",
      **{key: int(flags[key]) for key in ("batch_size", "patch_size") if flags.get(key)},
      **({"hardware": run_hardware(hardware, offset)} if hardware else {}),
      init_from=(f"zoo:{previous['name']} at step {offset} (fingerprint "
                 f"{fingerprint_before}), optimizer state started afresh")))
  shifted = [dict(row, step=row["step"] + offset,
                  cpu_hours=(None if row["cpu_hours"] is None
                             else round(row["cpu_hours"] + hours, 4)))
             for row in curve]
  merged = list(previous.get("learning_curve") or []) + shifted
  training = dict(steps=offset + steps, learning_rate=phases[-1]["learning_rate"],
                  learning_rate_schedule=schedule, init_from=before.get("init_from"),
                  cpu_hours=(merged[-1]["cpu_hours"] if shifted else hours),
                  phases=phases)
  return training, merged


def _fmt(value, digits=3):
  return "–" if value is None else f"{value:.{digits}f}"


def card_markdown(card):
  # Every listing in a fixed order, so a card renders the same from the
  # build's dicts and from the saved (sort_keys) card.json.
  config = ", ".join(f"{k}={card['config'][k]}" for k in sorted(card["config"]))
  phases = card["training"].get("phases") or []
  crops_vary = len({_crops(p) for p in phases if "patch_size" in p}) > 1
  lines = [f"# Zoo model `{card['name']}`", "",
           f"{card['architecture']} ({config}), trained on "
           f"**{card['distortion']}**"
           + (f" (α {card['alpha']}, LPIPS-{card['lpips_trunk']})"
              if card["distortion"] == "dpc" else "")
           + f"; fingerprint `{card['fingerprint']}`.", "",
           f"Training: {card['training']['steps']} steps "
           + ("(batch and crop size per phase below), " if crops_vary else
              f"of batch {card['training']['batch_size']} × "
              f"{card['training']['patch_size']}² crops, ")
           + f"{_fmt(card['training']['cpu_hours'], 2)} CPU-hours on "
           f"{card['training']['hardware']}"
           + (f", started from {card['training']['init_from']}"
              if card["training"]["init_from"] else "") + ". "
           f"Data: {card['training']['data']}", ""]
  if len(phases) > 1:
    lines += ["Training phases (a later phase starts from the weights of the one "
              "before):", ""]
    lines += [f"- steps {p['steps'][0]}–{p['steps'][1]}: "
              + (f"batch {p['batch_size']} × {p['patch_size']}² crops, "
                 if crops_vary and "patch_size" in p else "")
              + _schedule_text(p)
              + (f"; from {p['init_from']}" if p.get("init_from") else "") + "."
              for p in phases]
    lines.append("")
  if card.get("notes"):
    lines += [card["notes"], ""]
  if "kodak" in card:
    subset = ("" if card["kodak"]["images"] == 24 else
              f" — a subset: {', '.join(card['kodak']['image_names'])}")
    lines += [f"Kodak ({card['kodak']['images']} images{subset}), coded with the "
              "shipped float16 weights; classical codecs on the same images:", "",
              "| quality | λ | bpp | PSNR dB | MS-SSIM | MS-SSIM dB | LPIPS |",
              "|---|---|---|---|---|---|---|"]
    for row in card["kodak"]["per_quality"]:
      q = row["setting"].rpartition("@")[2]
      lines.append(f"| {q} | {card['lmbda_per_quality'].get(q, '')} | {_fmt(row['bpp'])} | "
                   f"{_fmt(row['psnr'], 2)} | {_fmt(row['msssim'], 4)} | "
                   f"{_fmt(row['msssim_db'], 2)} | {_fmt(row['lpips'])} |")
    lines += ["", "BD-rate (negative: fewer bits at equal quality):", "",
              "| against | PSNR | MS-SSIM dB | LPIPS |", "|---|---|---|---|"]
    bd_rate = card["kodak"]["bd_rate"]
    for anchor in [a for a in ANCHORS if a in bd_rate] + sorted(set(bd_rate) - set(ANCHORS)):
      results = bd_rate[anchor]
      cells = []
      for m in ("psnr", "msssim_db", "lpips"):
        r = results.get(m)
        value = None if r is None else r.get("bd_rate")
        cells.append("–" if value is None or value != value else f"{value:+.1f}%")
      lines.append(f"| {anchor} | " + " | ".join(cells) + " |")
  curve = card.get("learning_curve") or []
  if curve:
    lines += ["", "Learning curve (Kodak images of --curve_glob, estimated bpp):", "",
              "| step | CPU-hours | quality | bpp | PSNR dB | MS-SSIM dB | LPIPS |",
              "|---|---|---|---|---|---|---|"]
    for row in curve:
      lines.append(f"| {int(row['step'])} | {_fmt(row['cpu_hours'], 2)} | "
                   f"{_fmt(row['quality'], 0)} | {_fmt(row['bpp'])} | {_fmt(row['psnr'], 2)} | "
                   f"{_fmt(row['msssim_db'], 2)} | {_fmt(row.get('lpips'))} |")
  progress = card.get("learning_progress") or []
  if progress:
    lines += ["", "Progress between curve points (BD-rate of the later point against "
              "the earlier, and per CPU-hour; the issue counts a curve as flattened "
              "when this stays within 1 % per CPU-hour):", "",
              "| steps | CPU-hours | PSNR | MS-SSIM dB | LPIPS | per CPU-hour: PSNR "
              "| MS-SSIM dB | LPIPS |", "|---|---|---|---|---|---|---|---|"]
    for entry in progress:
      cells = [_percent(entry["bd_rate"].get(m)) for m, _ in CURVE_METRICS]
      cells += [_percent(entry["bd_rate_per_cpu_hour"].get(m)) for m, _ in CURVE_METRICS]
      lines.append(f"| {entry['from_step']}→{entry['to_step']} | "
                   f"{_fmt(entry['cpu_hours'], 2)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _crops(phase):
  return phase.get("batch_size"), phase.get("patch_size")


def _schedule_text(phase):
  schedule = phase.get("learning_rate_schedule") or {}
  text = f"learning rate {phase['learning_rate']:g}"
  if schedule.get("warmup_steps"):
    text += f" after a {schedule['warmup_steps']}-step linear warmup"
  if schedule.get("schedule") == "step" and schedule.get("boundaries"):
    text += (f", ×{schedule['decay_factor']:g} at step "
             + ", ".join(str(b) for b in schedule["boundaries"]))
  elif schedule.get("schedule") == "cosine":
    text += ", cosine decay"
    if schedule.get("decay_steps"):
      text += f" over {schedule['decay_steps']} steps"
    text += f" to ×{schedule.get('final_fraction', 0.01):g}"
  # Phases from before the card kept a precision were float32.
  if phase.get("precision", "float32") != "float32":
    text += f", {phase['precision']} training"
  if phase.get("hardware"):
    text += f", on {phase['hardware']}"
  return text


def _percent(value):
  return "–" if value is None else f"{value:+.1f}%"
