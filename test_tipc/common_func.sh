#!/usr/bin/env bash
# Helpers of the TIPC convention (PaddlePaddle's train-infer chain): a config txt holds
# "key:value" lines; a value may list alternatives split by "|", and per-mode values as
# "mode=value" (e.g. "epoch:lite_train_lite_infer=1|whole_train_whole_infer=12").

# "key:value" -> key (everything before the first ':').
function func_parser_key() {
    local line=$1
    echo "${line%%:*}"
}

# "key:value" -> value (everything after the first ':'; the value may itself hold ':').
function func_parser_value() {
    local line=$1
    echo "${line#*:}"
}

# "key:modeA=1|modeB=2" -> the value given for the mode in $MODE (empty when the mode is not listed).
function func_parser_params() {
    local value item
    value=$(func_parser_value "$1")
    local IFS='|'
    for item in ${value}; do
        if [ "${item%%=*}" = "${MODE}" ]; then
            echo "${item#*=}"
            return 0
        fi
    done
    echo ""
}

# key value -> "key=value", or nothing when the key or the value is null or empty.
function func_set_params() {
    local key=$1 value=$2
    if [ -z "${key}" ] || [ "${key}" = "null" ] || [ -z "${value// /}" ] || [ "${value}" = "null" ]; then
        echo ""
    else
        echo "${key}=${value}"
    fi
}

# status command results_log model_name [step_log]: appends "Run successfully with command - ..."
# or "Run failed with command - ..." to results_log (and echoes it); counts failures in TIPC_FAILED.
TIPC_FAILED=0
function status_check() {
    local last_status=$1 run_command=$2 run_log=$3 model_name=$4 log_path=${5:-}
    if [ "${last_status}" -eq 0 ]; then
        echo "Run successfully with command - ${model_name} - ${run_command} - ${log_path}" | tee -a "${run_log}"
    else
        echo "Run failed with command - ${model_name} - ${run_command} - ${log_path}" | tee -a "${run_log}"
        TIPC_FAILED=$((TIPC_FAILED + 1))
    fi
}

# LOG_PATH: TIPC_OUTPUT_DIR (default ./test_tipc/output), made absolute; status_log: the empty
# file $1 in it
function func_prepare_log_path() {
    LOG_PATH=${TIPC_OUTPUT_DIR:-./test_tipc/output}
    mkdir -p "${LOG_PATH}"
    LOG_PATH=$(cd "${LOG_PATH}" && pwd)
    status_log="${LOG_PATH}/$1"
    : >"${status_log}"
}

# exit 2 when the config's python command ($1) is not on PATH
function func_check_python() {
    if ! command -v "${1%% *}" >/dev/null 2>&1; then
        echo "'$1' (the config's python:) is not on PATH: activate the environment first" >&2
        exit 2
    fi
}

# lines: the non-empty lines of the config $1, carriage returns stripped (as Paddle's
# `IFS=$'\n' lines=(...)` reads them)
function func_read_lines() {
    lines=()
    local line
    while IFS= read -r line || [ -n "${line}" ]; do
        line=${line%$'\r'}
        [ -n "${line}" ] && lines+=("${line}")
    done <"$1"
}

# exit 2 unless line $1 of the config (0-based, blank lines skipped) holds $2; $3 names what
# was expected in the message (default: '$2')
function func_expect_line() {
    local index=$1 name=$2 what=${3:-"'$2'"}
    if [[ "${lines[index]:-}" != *"${name}"* ]]; then
        echo "${FILENAME}: line ${index} (0-based, blank lines skipped) should hold ${what}," \
            "found '${lines[index]:-<end of file>}'" >&2
        exit 2
    fi
}

