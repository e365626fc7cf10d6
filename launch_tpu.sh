#!/usr/bin/env bash
# Runs a command on every worker of a Cloud TPU VM (one host or a pod slice) from your workstation.
#
#   ./launch_tpu.sh --name=albert-v4 --zone=us-central2-b --accelerator_type=v4-32 -- \
#       python3 -m albert_jax.train --config=experiments/base.py --workdir=/mnt/shared/albert-base
#
# On a pod slice the workdir must be a directory every worker sees (an NFS/Filestore or Cloud Storage FUSE
# mount): all workers write each checkpoint together.
#
# Steps, each a gcloud command (--dry_run prints them instead of running them):
#   1. reuse the TPU VM if `tpu-vm describe` finds it (it must have the requested accelerator type and
#      be READY), else `tpu-vm create` it;
#   2. pack this checkout (tracked and untracked files, not what .gitignore ignores) into a tarball and
#      `tpu-vm scp` it to every worker, then unpack it to ~/albert_jax and pip-install the pinned
#      requirements with `jax[tpu]` there (`tpu-vm ssh --worker=all`);
#   3. run COMMAND in ~/albert_jax on all workers at once (`tpu-vm ssh --worker=all`).
#
# Why a tarball rather than `pip install git+URL`: every worker gets exactly the code you are looking at,
# unpushed commits and local edits included, and the workers need neither access to your git host nor
# credentials for a private repository.
#
# Multi-host: `python3 -m albert_jax.train` and `albert_jax.finetune` commands get
# `--config.distributed.auto=True` appended (unless they set a `--config.distributed.*` field themselves),
# so each worker calls `jax.distributed.initialize()`, which finds the other workers of a Cloud TPU slice
# by itself. Other commands are run as given.
set -euo pipefail

readonly REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REMOTE_DIR="albert_jax"          # on each worker, relative to the home directory
readonly REMOTE_TARBALL="albert_jax.tar.gz"

usage() {
  cat <<'EOF'
Usage: launch_tpu.sh --name=NAME --zone=ZONE --accelerator_type=TYPE [options] [-- COMMAND...]

Creates (or reuses) a Cloud TPU VM or pod slice, installs this albert_jax checkout on every worker, and
runs COMMAND in ~/albert_jax on all workers at once. Without COMMAND it only creates and installs.

Required:
  --name=NAME               TPU VM name (reused if it exists)
  --zone=ZONE               zone, e.g. us-central2-b (v4), us-east1-d (v5e)
  --accelerator_type=TYPE   e.g. v4-8 (one host), v4-32 (a 4-host pod slice), v5litepod-16, v5p-32

Options:
  --version=VERSION         TPU software (runtime) version; default by TPU generation:
                            v2/v3/v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite,
                            v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --project=PROJECT         Google Cloud project (default: gcloud's configured project)
  --preemptible             create a preemptible TPU
  --spot                    create a Spot TPU
  --dry_run                 print the commands instead of running them
  -h, --help                this help

Values may also follow their flag after a space (--zone us-central2-b).
albert_jax.train / albert_jax.finetune commands get --config.distributed.auto=True appended, so that
jax.distributed.initialize() connects the workers of a pod slice.

Example (pretraining ALBERT-base on a v4-32 pod slice; on a pod the workdir must be a directory that every
worker sees, such as an NFS/Filestore or Cloud Storage FUSE mount):
  ./launch_tpu.sh --name=albert-v4 --zone=us-central2-b --accelerator_type=v4-32 -- \
      python3 -m albert_jax.train --config=experiments/base.py --workdir=/mnt/shared/albert-base
EOF
}

die() {
  echo "launch_tpu.sh: error: $*" >&2
  echo "Run ./launch_tpu.sh --help for usage." >&2
  exit 2
}

# ---------------------------------------------------------------------------
# Flags.

name="" zone="" accelerator_type="" version="" project=""
preemptible=false spot=false dry_run=false
command=()

while (($#)); do
  flag="$1"
  shift
  case "$flag" in
    -h|--help) usage; exit 0 ;;
    --preemptible) preemptible=true ;;
    --spot) spot=true ;;
    --dry_run|--dry-run) dry_run=true ;;
    --) command=("$@"); break ;;
    --name=*|--zone=*|--accelerator_type=*|--version=*|--project=*)
      value="${flag#*=}"
      flag="${flag%%=*}" ;;&
    --name|--zone|--accelerator_type|--version|--project)
      (($#)) || die "$flag needs a value."
      value="$1"
      shift ;;&
    --name|--name=*) name="$value" ;;
    --zone|--zone=*) zone="$value" ;;
    --accelerator_type|--accelerator_type=*) accelerator_type="$value" ;;
    --version|--version=*) version="$value" ;;
    --project|--project=*) project="$value" ;;
    *) die "unknown argument '$flag'. Put the command to run after '--'." ;;
  esac
done

[[ -n "$name" ]] || die "--name is required (the TPU VM to create or reuse)."
[[ -n "$zone" ]] || die "--zone is required, e.g. --zone=us-central2-b."
[[ -n "$accelerator_type" ]] || die "--accelerator_type is required, e.g. --accelerator_type=v4-32."
[[ "$accelerator_type" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
  die "--accelerator_type=$accelerator_type is not a TPU type like v4-32, v5litepod-16 or v5p-8."
if $preemptible && $spot; then
  die "--preemptible and --spot exclude each other; choose one."
fi

# The runtime image for the TPU generation (Google's "TPU software versions" page).
if [[ -z "$version" ]]; then
  case "$accelerator_type" in
    v2-*|v3-*|v4-*) version="tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) die "no default runtime for $accelerator_type; pass --version" \
           "(see 'gcloud compute tpus tpu-vm versions list --zone=$zone')." ;;
  esac
fi

# Multi-host initialisation for albert_jax's entry points (see the header).
if ((${#command[@]})); then
  entry_point=false distributed_set=false
  for arg in "${command[@]}"; do
    [[ "$arg" == albert_jax.train || "$arg" == albert_jax.finetune ]] && entry_point=true
    [[ "$arg" == --config.distributed.* ]] && distributed_set=true
  done
  if $entry_point && ! $distributed_set; then
    command+=("--config.distributed.auto=True")
  fi
fi

# ---------------------------------------------------------------------------
# Running (or printing) commands.

location=(--zone="$zone")
[[ -n "$project" ]] && location+=(--project="$project")

# The words as one line a shell reads back as the same words (single quotes where needed, like shlex.quote).
quote() {
  local words=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("$word")
    else
      words+=("'${word//\'/\'\"\'\"\'}'")
    fi
  done
  echo "${words[*]}"
}

# Prints a command, then runs it unless this is a dry run.
run() {
  if $dry_run; then
    echo "$(quote "$@")"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

note() { echo "# $*"; }

# Step 1: reuse or create the TPU VM.
create=(gcloud compute tpus tpu-vm create "$name" "${location[@]}" --accelerator-type="$accelerator_type"
        --version="$version")
$preemptible && create+=(--preemptible)
$spot && create+=(--spot)
describe=(gcloud compute tpus tpu-vm describe "$name" "${location[@]}" --format="value(state,acceleratorType)")

if $dry_run; then
  note "Step 1: reuse the TPU VM if it exists, else create it."
  run "${describe[@]}"
  note "only if the describe above finds no TPU VM:"
  run "${create[@]}"
elif found="$("${describe[@]}" 2>/dev/null)"; then
  read -r state existing_type _ <<<"$found" || true
  if [[ -n "${existing_type:-}" && "$existing_type" != "$accelerator_type" ]]; then
    die "TPU VM '$name' in $zone exists as $existing_type, not $accelerator_type. Pass" \
        "--accelerator_type=$existing_type to use it, or choose another --name."
  fi
  if [[ "${state:-}" != "READY" ]]; then
    die "TPU VM '$name' in $zone is ${state:-in an unknown state}, not READY. Start it with" \
        "'gcloud compute tpus tpu-vm start $name --zone=$zone' (or delete it) and run again."
  fi
  echo "Reusing TPU VM '$name' ($accelerator_type, READY) in $zone." >&2
else
  echo "Creating TPU VM '$name' ($accelerator_type, $version) in $zone." >&2
  run "${create[@]}"
fi

# Step 2: copy this checkout to every worker and install it there.
workspace="$(mktemp -d)"
trap 'rm -rf "$workspace"' EXIT
tarball="$workspace/$REMOTE_TARBALL"
pack() {  # the files git would show you: tracked (as they are on disk) and untracked, minus ignored ones
  git -C "$REPO" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do [[ -e "$REPO/$path" ]] && printf '%s\0' "$path"; done |
    tar -C "$REPO" --null -T - -czf "$tarball"
}
jax_version="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$REPO/requirements.txt")"
install="mkdir -p $REMOTE_DIR && tar -xzf $REMOTE_TARBALL -C $REMOTE_DIR && cd $REMOTE_DIR"
install+=" && python3 -m pip install -q \"jax[tpu]${jax_version:+==$jax_version}\" -r requirements.txt"

if $dry_run; then
  note "Step 2: pack $REPO into $REMOTE_TARBALL (git ls-files: tracked and untracked, not ignored), copy and install."
else
  echo "Packing $REPO into $REMOTE_TARBALL." >&2
  pack
fi
run gcloud compute tpus tpu-vm scp "$tarball" "$name:$REMOTE_TARBALL" --worker=all "${location[@]}"
run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=all --command="$install"

# Step 3: the command, on all workers at once.
if ((${#command[@]})); then
  $dry_run && note "Step 3: run the command in ~/$REMOTE_DIR on all workers at once."
  remote_command="cd $REMOTE_DIR && $(quote "${command[@]}")"
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=all --command="$remote_command"
else
  note "No command given: '$name' is ready with albert_jax in ~/$REMOTE_DIR on every worker."
fi
note "Delete the TPU VM when done: gcloud compute tpus tpu-vm delete $name --zone=$zone${project:+ --project=$project}"
