#!/usr/bin/env bash
# TIPC train -> eval -> export -> inference chain of ppdet-ghm (PaddlePaddle's convention).
#
#   bash test_tipc/prepare.sh test_tipc/configs/retinanet_ghm/train_infer_python.txt lite_train_lite_infer
#   bash test_tipc/test_train_inference_python.sh test_tipc/configs/retinanet_ghm/train_infer_python.txt lite_train_lite_infer
#
# Reads the config txt by line position, as Paddle's TIPC scripts do (the section headers are
# checked so that a shifted line fails loudly instead of running the wrong command). Every step
# appends "Run successfully with command - ..." or "Run failed with command - ..." to
# $TIPC_OUTPUT_DIR/results_python.log (default ./test_tipc/output); each step's own output goes to a
# .log beside it. Exits non-zero when any step failed. Run from anywhere: it works in the repository
# root. The interpreter is the config's `python:` value as found on PATH (activate .venv first).
set -u

if [ $# -lt 2 ]; then
    echo "usage: bash $0 CONFIG_TXT MODE   (MODE: lite_train_lite_infer)" >&2
    exit 2
fi
FILENAME=$(realpath "$1")
MODE=$2
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${REPO_ROOT}" || exit 2
source test_tipc/common_func.sh
# ppdet_ghm (and test_tipc.python_infer) importable from this checkout, installed or not
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

case ${MODE} in
    lite_train_lite_infer) ;;
    lite_train_whole_infer | whole_train_whole_infer | whole_infer)
        echo "MODE ${MODE} needs COCO (dataset/coco) and a GPU: not provided by this chain;" \
            "use lite_train_lite_infer, or scripts/ for COCO training and evaluation" >&2
        exit 2
        ;;
    *)
        echo "unknown MODE '${MODE}' (expected lite_train_lite_infer)" >&2
        exit 2
        ;;
esac

func_read_lines "${FILENAME}"
func_expect_line 0 train_params "the train_params header"
func_expect_line 22 eval_params "the eval_params header"
func_expect_line 26 infer_params "the infer_params header"

# ---- train_params
model_name=$(func_parser_value "${lines[1]}")
python=$(func_parser_value "${lines[2]}")
gpu_list=$(func_parser_value "${lines[3]}")
train_use_gpu_key=$(func_parser_key "${lines[4]}")
train_use_gpu_value=$(func_parser_value "${lines[4]}")
epoch_key=$(func_parser_key "${lines[6]}")
epoch_num=$(func_parser_params "${lines[6]}")
save_model_key=$(func_parser_key "${lines[7]}")
train_batch_key=$(func_parser_key "${lines[8]}")
train_batch_value=$(func_parser_params "${lines[8]}")
pretrain_model_key=$(func_parser_key "${lines[9]}")
pretrain_model_value=$(func_parser_value "${lines[9]}")
train_model_name=$(func_parser_value "${lines[10]}")
train_infer_img_dir=$(func_parser_value "${lines[11]}")
train_param_key1=$(func_parser_key "${lines[12]}")
train_param_value1=$(func_parser_value "${lines[12]}")
trainer_list=$(func_parser_value "${lines[14]}")
norm_key=$(func_parser_key "${lines[15]}")
norm_trainer=$(func_parser_value "${lines[15]}")
# ---- eval_params
eval_py=$(func_parser_value "${lines[23]}")
eval_key1=$(func_parser_key "${lines[24]}")
eval_value1=$(func_parser_value "${lines[24]}")
# ---- infer_params: export
save_export_key=$(func_parser_key "${lines[27]}")
export_weight_key=$(func_parser_key "${lines[28]}")
norm_export=$(func_parser_value "${lines[29]}")
export_key1=$(func_parser_key "${lines[33]}")
export_value1=$(func_parser_value "${lines[33]}")
# ---- infer_params: inference on the exported model
infer_mode_list=$(func_parser_value "${lines[37]}")
inference_py=$(func_parser_value "${lines[39]}")
use_gpu_key=$(func_parser_key "${lines[40]}")
use_gpu_list=$(func_parser_value "${lines[40]}")
use_mkldnn_key=$(func_parser_key "${lines[41]}")
use_mkldnn_list=$(func_parser_value "${lines[41]}")
cpu_threads_key=$(func_parser_key "${lines[42]}")
cpu_threads_list=$(func_parser_value "${lines[42]}")
batch_size_key=$(func_parser_key "${lines[43]}")
batch_size_list=$(func_parser_value "${lines[43]}")
precision_key=$(func_parser_key "${lines[45]}")
precision_list=$(func_parser_value "${lines[45]}")
infer_model_key=$(func_parser_key "${lines[46]}")
image_dir_key=$(func_parser_key "${lines[47]}")
save_log_key=$(func_parser_key "${lines[48]}")
benchmark_key=$(func_parser_key "${lines[49]}")
benchmark_value=$(func_parser_value "${lines[49]}")
infer_key1=$(func_parser_key "${lines[50]:-null:null}")
infer_value1=$(func_parser_value "${lines[50]:-null:null}")

func_prepare_log_path results_python.log
echo "TIPC ${model_name} ${MODE}: logs in ${LOG_PATH}"
func_check_python "${python}"

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

# Inference of the exported model over every device / oneDNN / threads / batch-size combination.
function func_inference() {
    local _python=$1 _script=$2 _model_dir=$3 _log_path=$4 _img_dir=$5
    local IFS='|' device use_mkldnn threads batch_size precision
    for device in ${use_gpu_list}; do
        if [ "${device}" = "cpu" ] || [ "${device}" = "False" ]; then
            for use_mkldnn in ${use_mkldnn_list}; do
                for threads in ${cpu_threads_list}; do
                    for batch_size in ${batch_size_list}; do
                        local log="${_log_path}/python_infer_cpu_usemkldnn_${use_mkldnn}_threads_${threads}_batchsize_${batch_size}.log"
                        local cmd="${_python} ${_script} ${use_gpu_key}=${device}"
                        cmd+=" $(func_set_params "${use_mkldnn_key}" "${use_mkldnn}")"
                        cmd+=" $(func_set_params "${cpu_threads_key}" "${threads}")"
                        cmd+=" $(func_set_params "${infer_model_key}" "${_model_dir}")"
                        cmd+=" $(func_set_params "${batch_size_key}" "${batch_size}")"
                        cmd+=" $(func_set_params "${image_dir_key}" "${_img_dir}")"
                        cmd+=" $(func_set_params "${save_log_key}" "null")"
                        cmd+=" $(func_set_params "${benchmark_key}" "${benchmark_value}")"
                        cmd+=" $(func_set_params "${infer_key1}" "${infer_value1}")"
                        run_step "${log}" "${cmd}"
                    done
                done
            done
        elif [ "${device}" = "gpu" ] || [ "${device}" = "True" ]; then
            for precision in ${precision_list}; do
                [ "${precision}" != "paddle" ] && continue # TensorRT modes are not wired here
                for batch_size in ${batch_size_list}; do
                    local log="${_log_path}/python_infer_gpu_mode_${precision}_batchsize_${batch_size}.log"
                    local cmd="${_python} ${_script} ${use_gpu_key}=${device}"
                    cmd+=" $(func_set_params "${precision_key}" "${precision}")"
                    cmd+=" $(func_set_params "${infer_model_key}" "${_model_dir}")"
                    cmd+=" $(func_set_params "${batch_size_key}" "${batch_size}")"
                    cmd+=" $(func_set_params "${image_dir_key}" "${_img_dir}")"
                    cmd+=" $(func_set_params "${benchmark_key}" "${benchmark_value}")"
                    cmd+=" $(func_set_params "${infer_key1}" "${infer_value1}")"
                    run_step "${log}" "${cmd}"
                done
            done
        else
            echo "device '${device}' is not supported (cpu or gpu)" >&2
            TIPC_FAILED=$((TIPC_FAILED + 1))
        fi
    done
}

IFS='|'
for gpu in ${gpu_list}; do
    use_gpu=${train_use_gpu_value}
    launcher=""
    if [ "${gpu}" = "-1" ]; then
        use_gpu=False
        unset CUDA_VISIBLE_DEVICES
    elif [[ "${gpu}" == *,* ]]; then
        # several GPUs: Paddle's launcher, which takes a script path (scripts/main.py is ppdet-ghm
        # as a file) instead of `-m ppdet_ghm`
        launcher="-m paddle.distributed.launch --gpus=${gpu} --log_dir=${LOG_PATH}/launch_gpus_${gpu}"
        export CUDA_VISIBLE_DEVICES=${gpu}
    else
        export CUDA_VISIBLE_DEVICES=${gpu}
    fi
    for trainer in ${trainer_list}; do
        if [ "${trainer}" != "${norm_key}" ]; then
            echo "trainer '${trainer}' is not provided (only ${norm_key})" >&2
            TIPC_FAILED=$((TIPC_FAILED + 1))
            continue
        fi
        save_log="${LOG_PATH}/${trainer}_gpus_${gpu}"
        weights="${save_log}/${model_name}/${train_model_name}"

        # ---- train
        run_train=${norm_trainer}
        [ -n "${launcher}" ] && run_train=${run_train/#-m ppdet_ghm /scripts/main.py }
        train_cmd="${python} ${launcher} ${run_train}"
        train_cmd+=" $(func_set_params "${train_use_gpu_key}" "${use_gpu}")"
        train_cmd+=" $(func_set_params "${save_model_key}" "${save_log}")"
        train_cmd+=" $(func_set_params "${epoch_key}" "${epoch_num}")"
        train_cmd+=" $(func_set_params "${pretrain_model_key}" "${pretrain_model_value}")"
        train_cmd+=" $(func_set_params "${train_batch_key}" "${train_batch_value}")"
        train_cmd+=" $(func_set_params filename "${model_name}")"
        train_cmd+=" $(func_set_params "${train_param_key1}" "${train_param_value1}")"
        if ! run_step "${save_log}_train.log" "${train_cmd}"; then
            continue # nothing to evaluate or export
        fi

        # ---- eval
        if [ "${eval_py}" != "null" ]; then
            eval_cmd="${python} ${eval_py} $(func_set_params "${export_weight_key}" "${weights}")"
            eval_cmd+=" $(func_set_params "${train_use_gpu_key}" "${use_gpu}")"
            eval_cmd+=" $(func_set_params "${eval_key1}" "${eval_value1}")"
            # the key of the export's output-dir line is the CLI's --output_dir flag
            eval_cmd+=" $(func_set_params "${save_export_key}" "${save_log}/eval")"
            run_step "${save_log}_eval.log" "${eval_cmd}"
        fi

        # ---- export, then inference on the exported model. ppdet's export_model.py writes into
        # <--output_dir>/<filename>; `ppdet-ghm export` into --output_dir itself: the chain passes
        # <save_log>/<model_name>, the folder Paddle's chain exports to (beside the checkpoints).
        if [ "${norm_export}" != "null" ] && [ "${infer_mode_list}" != "null" ]; then
            export_cmd="${python} ${norm_export} $(func_set_params "${export_weight_key}" "${weights}")"
            export_cmd+=" $(func_set_params filename "${model_name}")"
            export_cmd+=" $(func_set_params "${export_key1}" "${export_value1}")"
            export_cmd+=" $(func_set_params "${save_export_key}" "${save_log}/${model_name}")"
            if run_step "${save_log}_export.log" "${export_cmd}"; then
                func_inference "${python}" "${inference_py}" "${save_log}/${model_name}" \
                    "${LOG_PATH}" "${train_infer_img_dir}"
            fi
        fi
    done
done
unset IFS

if [ "${TIPC_FAILED}" -ne 0 ]; then
    echo "TIPC ${model_name} ${MODE}: ${TIPC_FAILED} step(s) failed, see ${status_log}" >&2
    exit 1
fi
echo "TIPC ${model_name} ${MODE}: all steps succeeded (${status_log})"
