#!/usr/bin/env bash
# Mutation testing of the method's core files with mutmut 3 (on demand; not part of CI).
#
#   bash scripts/mutation.sh                       # all five files, the working tree
#   bash scripts/mutation.sh mcp_cl metrics        # some of them (names below)
#   bash scripts/mutation.sh --ref 1e2d53b mcp_cl  # a committed version (e.g. "before" counts)
#
# Options: --ref REV (git revision instead of the working tree), --children N (parallel mutant
# runs, default 1: be kind to shared machines), --timeout S (per file, default 3600),
# --python PY (default: .venv/bin/python, else python3; needs `pip install -e .[dev]`),
# --workdir DIR (default: ${TMPDIR:-/tmp}/sdcpc-mutation).
#
# Each file is mutated in its own scratch copy of the repository (nothing is written to the
# checkout), against the fast tests of that file only. Prints one line per file:
#   FILE  mutants killed survived no-tests timeout other
# and writes each survivor's diff to WORKDIR/<name>/survivors.txt. docs/method.md lists the
# surviving mutants judged equivalent, with the reason.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REF="" CHILDREN=1 TIMEOUT=3600 PY="" WORKDIR="${TMPDIR:-/tmp}/sdcpc-mutation"
NAMES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ref) REF="$2"; shift 2 ;;
    --children) CHILDREN="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "mutation.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) NAMES+=("$1"); shift ;;
  esac
done
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
MUTMUT="$(dirname "$PY")/mutmut"
if [[ ! -x "$MUTMUT" ]]; then
  echo "mutation.sh: mutmut not found next to $PY; install the dev extra: $PY -m pip install -e '.[dev]'" >&2
  exit 2
fi

# name -> file to mutate | the tests that check it (pytest node ids / files, space separated)
declare -A FILE TESTS
FILE[temporal]=sdcpc_core/models/temporal.py
TESTS[temporal]="test/core/test_method.py test/core/test_fixed_shape.py test/core/test_models.py::test_static_difference_bounds_and_identity \
test/core/test_models.py::test_ssea_scale_attention_equals_attending_to_upsampled_grids \
test/core/test_models.py::test_selection_ignores_rounding_noise_and_breaks_ties_by_position \
test/core/test_models.py::test_cached_reference_projections_equal_recomputed_ones \
test/core/test_models.py::test_cached_difference_basis_equals_direct_definition \
test/core/test_models.py::test_average_pool_equals_adaptive_pooling \
test/core/test_models.py::test_reference_grad_off_same_output_no_grad_through_references \
test/core/test_models.py::test_temporal_context_changes_output_and_uses_references"
FILE[mcp_cl]=sdcpc_core/losses/mcp_cl.py
TESTS[mcp_cl]="test/core/test_method.py test/core/test_mcp_cl.py"
FILE[metrics]=sdcpc_core/metrics.py
TESTS[metrics]="test/core/test_metrics.py test/core/test_metrics_edges.py"
FILE[postprocess]=sdcpc_core/postprocess.py
TESTS[postprocess]="test/core/test_postprocess.py test/core/test_engine.py::test_outputs_at_input_resolution_with_dynamic_mask"
FILE[window_attention]=sdcpc_core/ops/window_attention.py
TESTS[window_attention]="test/core/test_window_attention.py test/core/test_window_attention_edges.py \
test/core/test_fixed_shape.py test/core/test_method.py"
ALL=(temporal mcp_cl metrics postprocess window_attention)
[[ ${#NAMES[@]} -eq 0 ]] && NAMES=("${ALL[@]}")

printf '%-36s %8s %7s %8s %8s %7s %5s\n' FILE mutants killed survived no-tests timeout other
for name in "${NAMES[@]}"; do
  if [[ -z "${FILE[$name]:-}" ]]; then
    echo "mutation.sh: unknown file name '$name'; choose from: ${ALL[*]}" >&2; exit 2
  fi
  work="$WORKDIR/$name${REF:+-$REF}"
  rm -rf "$work" && mkdir -p "$work"
  if [[ -n "$REF" ]]; then
    git -C "$ROOT" archive "$REF" sdcpc_core test pytest.ini | tar -x -C "$work"
  else  # tracked and untracked-but-not-ignored files of the working tree
    (cd "$ROOT" && git ls-files -co --exclude-standard -- sdcpc_core test pytest.ini | tar -cf - -T -) | tar -x -C "$work"
  fi
  # tests missing from an older revision are left out of its selection
  tests=""
  for t in ${TESTS[$name]}; do [[ -e "$work/${t%%::*}" ]] && tests+="  $t"$'\n'; done
  {
    echo "[mutmut]"
    echo "source_paths=sdcpc_core"
    echo "only_mutate=${FILE[$name]}"
    echo "pytest_add_cli_args_test_selection="
    printf '%s' "$tests"
    # its two spawned gloo processes do not run mutmut's trampolines (it is tried by hand)
    echo "pytest_add_cli_args="
    echo "  --deselect"
    echo "  test/core/test_method.py::test_mcp_cl_first_initialisation_is_identical_on_all_ranks"
    # torch.compile graph capture: far too slow per mutant, and dynamo would trace mutmut's trampolines
    echo "  --deselect"
    echo "  test/core/test_fixed_shape.py::test_encode_and_forward_cached_compile_with_fullgraph"
    echo "also_copy="
    echo "  test"
    echo "  pytest.ini"
  } > "$work/setup.cfg"
  # mutmut forks a child per mutant: numba's fork-safe threading layer (the default, GNU OpenMP,
  # terminates a child forked after the parent used it, which mutmut would count as a timeout)
  (cd "$work" && OMP_NUM_THREADS=1 NUMBA_THREADING_LAYER=workqueue timeout "$TIMEOUT" nice -n 10 "$MUTMUT" run --max-children "$CHILDREN" \
      > run.log 2>&1) || echo "mutation.sh: $name: mutmut run stopped (exit $?; see $work/run.log); counts so far:" >&2
  (cd "$work" && "$MUTMUT" results --all true 2>/dev/null) > "$work/results.txt" || true
  # per survivor: its name, the function it is in, and the changed lines (a changed default argument
  # shows as the changed `def` line)
  (cd "$work" && for m in $(awk '$2 == "survived" {sub(":", "", $1); print $1}' results.txt); do
      echo "== $m  (in $(sed -E 's/^.*\.x(ǁ|_)//; s/__mutmut_[0-9]+$//; s/ǁ/./g' <<< "$m"))"
      "$MUTMUT" show "$m" 2>/dev/null | grep -E '^[-+]([^-+]|$)' || true; done) > "$work/survivors.txt"
  awk -v f="${FILE[$name]}" '
    { n++; s = $2 }
    s == "killed" { k++ } s == "survived" { sv++ } s == "no" { nt++ } s == "timeout" { to++ }
    s != "killed" && s != "survived" && s != "no" && s != "timeout" { o++ }
    END { printf "%-36s %8d %7d %8d %8d %7d %5d\n", f, n, k, sv, nt, to, o }' "$work/results.txt"
done
