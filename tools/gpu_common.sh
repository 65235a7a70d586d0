# Sourced by the device scripts (gpu_session.sh, gpu_quality.sh), from the repository
# root: the wheels the device's image lacks, the environment, and `stage`.
if [ -d .whl ]; then  # the device's image lacks these (tools/gpu_wheels.sh)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-10}  # a bar line every 10 s
# Autotuning made every compile outlast the H100 run's limits (tools/README.md).
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0"

stage() {  # stage SECONDS COMMAND...: run with a limit, report the time and exit status
    local limit=$1 start=$SECONDS
    shift
    echo "=== [$(date +%T)] $* (limit ${limit} s)"
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    echo "=== rc $? after $((SECONDS - start)) s"
}
