#!/usr/bin/env bash
# TIPC paddle2onnx chain of ppdet-ghm (PaddlePaddle's test_tipc/test_paddle2onnx.sh convention):
# export -> paddle2onnx conversion -> ONNX Runtime inference, each step logged.
#
#   bash test_tipc/prepare.sh test_tipc/configs/retinanet_ghm/train_infer_python.txt lite_train_lite_infer
#   bash test_tipc/test_train_inference_python.sh test_tipc/configs/retinanet_ghm/train_infer_python.txt lite_train_lite_infer
#   bash test_tipc/test_paddle2onnx.sh test_tipc/configs/retinanet_ghm/model_linux_gpu_normal_normal_paddle2onnx_python_linux_cpu.txt
#
# Reads the config txt by line position, as Paddle's script does (the header and the keys of the
# command lines are checked, so a shifted line fails loudly). Differences to Paddle's script:
# `weights:null` takes the weights the train chain wrote under the same output folder
# ($TIPC_OUTPUT_DIR/norm_train_gpus_-1/<model_name>/model_final.pdparams: Paddle's txt names a
# download); `--output_dir:null` exports into $TIPC_OUTPUT_DIR/paddle2onnx/<model_name>; the
# conversion command is test_tipc/onnx_convert.py (paddle2onnx's flags, plus the repairs of
# ppdet_ghm.engine.onnx_export that the converted detector needs) and the inference one
# test_tipc/onnx_infer.py (ONNX Runtime, CPU). Every step appends "Run successfully with command
# - ..." or "Run failed with command - ..." to $TIPC_OUTPUT_DIR/results_paddle2onnx.log (default
# ./test_tipc/output); exits 1 when a step failed, 2 on a usage error. The interpreter is the
# config's `python:` value as found on PATH (activate .venv first).
set -u

if [ $# -lt 1 ]; then
    echo "usage: bash $0 CONFIG_TXT [paddle2onnx_infer]" >&2
    exit 2
fi
FILENAME=$(realpath "$1")
MODE=${2:-paddle2onnx_infer}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO_ROOT}" || exit 2
source test_tipc/common_func.sh
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

if [ "${MODE}" != "paddle2onnx_infer" ]; then
    echo "unknown MODE '${MODE}' (expected paddle2onnx_infer)" >&2
    exit 2
fi

func_read_lines "${FILENAME}"
func_expect_line 0 paddle2onnx_params
func_expect_line 7 norm_export:
func_expect_line 17 cmd:
func_expect_line 25 infer_py:

model_name=$(func_parser_value "${lines[1]}")
python=$(func_parser_value "${lines[2]}")
filename_key=$(func_parser_key "${lines[3]}")
# export
save_export_key=$(func_parser_key "${lines[5]}")
save_export_value=$(func_parser_value "${lines[5]}")
export_weight_key=$(func_parser_key "${lines[6]}")
export_weight_value=$(func_parser_value "${lines[6]}")
norm_export=$(func_parser_value "${lines[7]}")
export_param_key=$(func_parser_key "${lines[12]}")
export_param_value=$(func_parser_value "${lines[12]}")
# paddle2onnx
infer_mode_list=$(func_parser_value "${lines[15]}")
paddle2onnx_cmd=$(func_parser_value "${lines[17]}")
model_dir_key=$(func_parser_key "${lines[18]}")
model_filename_key=$(func_parser_key "${lines[19]}")
model_filename_value=$(func_parser_value "${lines[19]}")
params_filename_key=$(func_parser_key "${lines[20]}")
params_filename_value=$(func_parser_value "${lines[20]}")
save_file_key=$(func_parser_key "${lines[21]}")
save_file_value=$(func_parser_value "${lines[21]}")
opset_version_key=$(func_parser_key "${lines[22]}")
opset_version_value=$(func_parser_value "${lines[22]}")
enable_onnx_checker_key=$(func_parser_key "${lines[23]}")
enable_onnx_checker_value=$(func_parser_value "${lines[23]}")
paddle2onnx_param1_key=$(func_parser_key "${lines[24]}")
paddle2onnx_param1_value=$(func_parser_value "${lines[24]}")
# ONNX Runtime inference
inference_py=$(func_parser_value "${lines[25]}")
infer_cfg_key=$(func_parser_key "${lines[26]}")
onnx_file_key=$(func_parser_key "${lines[27]}")
infer_image_key=$(func_parser_key "${lines[28]}")
infer_image_value=$(func_parser_value "${lines[28]}")
infer_param1_value=$(func_parser_value "${lines[29]:-null:null}")

func_prepare_log_path results_paddle2onnx.log
echo "TIPC ${model_name} ${MODE}: logs in ${LOG_PATH}"
func_check_python "${python}"
[ "${save_export_value}" = "null" ] && save_export_value="${LOG_PATH}/paddle2onnx"
[ "${export_weight_value}" = "null" ] &&
    export_weight_value="${LOG_PATH}/norm_train_gpus_-1/${model_name}/model_final.pdparams"

# run_step LOG_FILE COMMAND: runs COMMAND with its output in LOG_FILE, shows the output, records status.
function run_step() {
    local step_log=$1 cmd=$2
    echo "+ ${cmd}"
    eval "${cmd}" >"${step_log}" 2>&1
    local last_status=$?
    cat "${step_log}"
    status_check "${last_status}" "${cmd}" "${status_log}" "${model_name}" "${step_log}"
    return "${last_status}"
}

function func_paddle2onnx_inference() {
    local _python=$1 _log_path=$2 _model_dir=$3
    local cmd="${paddle2onnx_cmd}"
    cmd+=" $(func_set_params "${model_dir_key}" "${_model_dir}")"
    cmd+=" $(func_set_params "${model_filename_key}" "${model_filename_value}")"
    cmd+=" $(func_set_params "${params_filename_key}" "${params_filename_value}")"
    cmd+=" $(func_set_params "${save_file_key}" "${_model_dir}/${save_file_value}")"
    cmd+=" $(func_set_params "${opset_version_key}" "${opset_version_value}")"
    cmd+=" $(func_set_params "${enable_onnx_checker_key}" "${enable_onnx_checker_value}")"
    cmd+=" $(func_set_params "${paddle2onnx_param1_key}" "${paddle2onnx_param1_value}")"
    run_step "${_log_path}/paddle2onnx_trans_model.log" "${cmd}" || return 1

    cmd="${_python} ${inference_py}"
    cmd+=" $(func_set_params "${infer_cfg_key}" "${_model_dir}/infer_cfg.yml")"
    cmd+=" $(func_set_params "${onnx_file_key}" "${_model_dir}/${save_file_value}")"
    cmd+=" $(func_set_params "${infer_image_key}" "${infer_image_value}")"
    [ "${infer_param1_value}" != "null" ] && cmd+=" ${infer_param1_value}"
    run_step "${_log_path}/paddle2onnx_infer_cpu.log" "${cmd}"
}

IFS='|'
for infer_mode in ${infer_mode_list}; do
    unset IFS
    if [ "${infer_mode}" != "norm" ]; then
        echo "infer_mode '${infer_mode}' is not provided (only norm)" >&2
        TIPC_FAILED=$((TIPC_FAILED + 1))
        continue
    fi
    export_dir="${save_export_value}/${model_name}"
    # `ppdet-ghm export --output_dir D` writes into D itself (ppdet's export_model.py into
    # D/<filename>): the chain passes <output_dir>/<model_name>, the folder Paddle's chain uses
    export_cmd="${python} ${norm_export} $(func_set_params "${export_weight_key}" "${export_weight_value}")"
    export_cmd+=" $(func_set_params "${filename_key}" "${model_name}")"
    export_cmd+=" $(func_set_params "${export_param_key}" "${export_param_value}")"
    export_cmd+=" $(func_set_params "${save_export_key}" "${export_dir}")"
    if run_step "${LOG_PATH}/paddle2onnx_export.log" "${export_cmd}"; then
        func_paddle2onnx_inference "${python}" "${LOG_PATH}" "${export_dir}"
    fi
done
unset IFS

if [ "${TIPC_FAILED}" -ne 0 ]; then
    echo "TIPC ${model_name} ${MODE}: ${TIPC_FAILED} step(s) failed, see ${status_log}" >&2
    exit 1
fi
echo "TIPC ${model_name} ${MODE}: all steps succeeded (${status_log})"
