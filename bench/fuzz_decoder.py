"""Long fuzz run of the decoder: >= 100 000 damaged bitstreams, counted.

    nice -n 10 python -m bench.fuzz_decoder [--inputs 100000] [--seed 0]

~190 inputs/s on 2 cores at load ~4 (100 000 in ~9 min): the model is tiny
and traced, so a decode is ~10 ms, mostly the graph's dispatch; the worker
round trip adds little (in-process runs at the same rate), so inputs are not
batched. Budget overruns are what cost: each kills the worker (a spare takes
over while a new one imports TensorFlow) and is re-checked afterwards at
`--recheck` times the budget. The old re-check (20x a 5 s budget) spent
~17 min on ~10 escape-edge hangs; now 4x (20 s), far above any legitimate
decode here (< 0.5 s). A 1 s budget was tried and is too short on a loaded
machine: a niced worker starved of CPU overran it, and each false overrun
cost a worker restart.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from bench import common


def run(out_dir="bench/results", inputs=100_000, seed=0, size=(48, 64),
        budget_seconds=5.0, recheck_factor=4, max_pixels=1 << 18, save_dir=None):
  """Runs the fuzzer; writes fuzz.json and fuzz.md; returns the result."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from tqdm import tqdm
  import dpc_tf
  from dpc_tf import container, fuzzing, isolation
  from skimage import data as skimage_data
  model = fuzzing.scaled_model("hyperprior", seed=seed)
  height, width = size
  image = np.ascontiguousarray(skimage_data.astronaut()[100:100 + height, 150:150 + width])
  with tempfile.TemporaryDirectory() as workdir:
    model_dir = os.path.join(workdir, "model")
    dpc_tf.save_model(model, model_dir)
    decoder = isolation.DecoderProcess(model_dir, base_seconds=budget_seconds,
                                       seconds_per_megapixel=4 * budget_seconds,
                                       spare=True)
    codec = dpc_tf.load_codec(model_dir, isolate=decoder)
    data = codec.encode(image)
    decoder.wait_ready()
    load_start = os.getloadavg()
    start = time.perf_counter()
    with tqdm(total=inputs, desc="fuzz", unit="input", dynamic_ncols=True,
              mininterval=5) as progress:
      # A few crafted escape-edge strings (1 in 10 000) among the random
      # damage: each must come back as a DecodeTimeoutError.
      result = fuzzing.fuzz(lambda d: codec.decode(d, max_pixels=max_pixels), data,
                            inputs=inputs, seed=seed, max_pixels=max_pixels,
                            escape_edge=fuzzing.escape_edge_string(model),
                            escape_edge_rate=1e-4, progress=progress)
    seconds = time.perf_counter() - start
    inputs_requested, inputs = inputs, result["inputs"]  # Fewer if interrupted.
    if inputs < inputs_requested:
      decoder.close()  # Its worker may owe a reply to the interrupted request.
    # A budget overrun on a loaded machine is not yet a hang: decode each
    # again with `recheck_factor` times the budget; what still overruns is one.
    timed_out = result.pop("timeouts")
    hangs = 0
    for _, damaged in timed_out:
      try:
        decoder.decode(damaged, max_pixels=max_pixels, timeout=recheck_factor * budget_seconds)
      except isolation.DecodeTimeoutError:
        hangs += 1
      except container.BitstreamError:  # Refused, only slowly: not a hang.
        pass
    decoder.close()
  failures = result.pop("failures")
  if save_dir and failures:
    os.makedirs(save_dir, exist_ok=True)
    for i, (kind, outcome, message, damaged) in enumerate(failures):
      with open(os.path.join(save_dir, f"failure_{i:04d}_{kind}.dpc"), "wb") as f:
        f.write(damaged)
  result.update(
      inputs_requested=inputs_requested, seconds=seconds, inputs_per_s=inputs / seconds,
      timeouts=len(timed_out), hangs=hangs,
      timeout_kinds=sorted({kind for kind, _ in timed_out}),
      failures=len(failures),
      failure_examples=[(k, o, m) for k, o, m, _ in failures[:20]],
      config=dict(seed=seed, image=f"{width}x{height} astronaut crop",
                  stream_bytes=len(data), model="hyperprior, 8 filters, scaled "
                  "weights (fuzzing.scaled_model)", budget_seconds=budget_seconds,
                  recheck_factor=recheck_factor, max_pixels=max_pixels,
                  load_average_start_end=[load_start, os.getloadavg()]))
  outcomes = sorted({o for counts in result["by_kind"].values() for o in counts})
  table = common.markdown_table(
      ["mutation", "inputs"] + outcomes,
      [[kind, sum(counts.values())] + [counts.get(o, 0) for o in outcomes]
       for kind, counts in result["by_kind"].items()])
  summary = (
      ("" if inputs == inputs_requested else
       f"Interrupted after {inputs} of {inputs_requested} inputs. ") +
      f"{inputs} damaged versions of a {len(data)}-byte stream ({width}x{height}, "
      f"seed {seed}) in {seconds / 60:.1f} min ({inputs / seconds:.0f} inputs/s): "
      f"{result['decoded']} decoded to their declared size, "
      f"{sum(result['rejected'].values())} refused with a BitstreamError "
      f"({len(timed_out)} of them overran the {budget_seconds:.0f} s budget and "
      f"were stopped; decoded again with {recheck_factor * budget_seconds:.0f} s, {hangs} still "
      f"overran: hangs of tfc's range decoder), {len(failures)} failures.")
  return common.write(out_dir, "fuzz", result,
                      f"## Decoder fuzzing\n\n{summary}\n\n{table}")


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--inputs", type=int, default=100_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--budget", type=float, default=5.0,
                      help="seconds per decode before the worker is killed")
  parser.add_argument("--recheck", type=float, default=4,
                      help="re-decode each overrun with this many times the budget")
  parser.add_argument("--out", default="bench/results")
  parser.add_argument("--save-dir", help="write inputs that fail here")
  args = parser.parse_args(argv)
  result = run(args.out, args.inputs, args.seed, budget_seconds=args.budget,
               recheck_factor=args.recheck, save_dir=args.save_dir)
  return 1 if result["failures"] else 0


if __name__ == "__main__":
  sys.exit(main())
