"""Our side of the alignment: the Paddle model of ``--config`` with the alignment weights.

The weights reach the model only through the converter (``ppdet_ghm.convert.convert_state_dict``,
the rename table users convert mmdet checkpoints with), so every step also checks the table.
Everything the steps read comes from the model's public pieces: ``model.backbone``, ``model.neck``,
``model.head`` (eval: raw per-level outputs; ``get_targets`` / ``level_losses`` for training
targets and per-level losses; ``anchor_generator``), and ``model(inputs)`` for losses in training
mode and detections in eval mode.
"""

import numpy as np

from align import data, weights

LEVELS = ("P3", "P4", "P5", "P6", "P7")


def load_converted_weights(model, mmdet_state: dict):
    """Convert mmdet-named arrays with our converter and load them into ``model`` strictly.

    Each array is cast to the dtype of the tensor it fills (float64 models); every key must load
    and hold the converted value afterwards. Also used by bench/ (the same weights as mmdet).
    """
    from ppdet_ghm.convert import convert_state_dict

    own = model.state_dict()
    converted = convert_state_dict(mmdet_state, {k: v.shape for k, v in own.items()})
    dtypes = {k: str(v.numpy().dtype) for k, v in own.items()}
    converted = {k: v.astype(dtypes[k]) for k, v in converted.items()}
    missing, unexpected = model.set_state_dict(converted)
    if missing or unexpected:
        raise ValueError(f"set_state_dict: missing {missing}, unexpected {unexpected}")
    for key, value in model.state_dict().items():  # set_state_dict casts; check it stuck
        if not np.array_equal(value.numpy(), converted[key]):
            raise ValueError(f"{key} did not load the converted value")


def input_dict(batch: dict, with_gt: bool = True, dtype: str = "float32") -> dict:
    """ppdet's input dict for a NumPy ``batch`` (``align.data.fake_batch`` layout: normalised,
    padded ``images``, ``image_shapes``, per-image ``gt_boxes`` / ``gt_labels``), scale factor 1.
    A fresh dict each call (ppdet's architecture keeps a reference to its inputs)."""
    import paddle

    shapes = np.array(batch["image_shapes"], dtype=np.float32)
    inputs = {
        "image": paddle.to_tensor(np.ascontiguousarray(batch["images"]).astype(dtype)),
        "im_shape": paddle.to_tensor(shapes),
        "scale_factor": paddle.ones([len(shapes), 2], dtype="float32"),
    }
    if with_gt:
        inputs["gt_bbox"] = [paddle.to_tensor(b) for b in batch["gt_boxes"]]
        inputs["gt_class"] = [
            paddle.to_tensor(np.asarray(c).astype(np.int32).reshape(-1, 1))
            for c in batch["gt_labels"]
        ]
    return inputs


class PaddleContext:
    """What the Paddle halves of the steps share: weights, inputs, and a model built once."""

    def __init__(self, seed: int, config: str):
        import paddle

        import ppdet_ghm  # noqa: F401  (registers our modules, applies the compat fixes)

        paddle.set_device("cpu")
        paddle.seed(0)
        self.seed = seed
        self.config = config
        self.batch = data.fake_batch()
        self.state_dict = weights.generate_state_dict(seed)
        self.meta = weights.weights_meta(seed, self.state_dict)
        self._models = {}

    # ----------------------------------------------------------------- model and weights

    def model(self, dtype: str = "float32"):
        """Our model holding the alignment weights (built on first use per dtype), eval mode.

        ``float64`` builds the model under ``paddle.set_default_dtype('float64')``: parameters in
        double precision, buffers the code creates as float32 (GHM ``acc_sum``) stay float32.
        """
        if dtype not in self._models:
            import paddle

            from ppdet_ghm.builder import build_model

            default = paddle.get_default_dtype()
            paddle.set_default_dtype(dtype)
            try:
                model = build_model(self.config)
            finally:
                paddle.set_default_dtype(default)
            self.load_weights(model)
            model.eval()
            self._models[dtype] = model
        return self._models[dtype]

    def fresh_model(self, dtype: str = "float32"):
        """The model with the alignment weights (and zero GHM ``acc_sum``) loaded again, eval mode."""
        model = self.model(dtype)
        self.load_weights(model)
        model.eval()
        return model

    def load_weights(self, model):
        """:func:`load_converted_weights` of the alignment weights."""
        load_converted_weights(model, self.state_dict)

    def name_map(self):
        """mmdet name -> our parameter name, from the converter's rename table."""
        from ppdet_ghm.convert import mmdet_retinanet_table

        return dict(mmdet_retinanet_table().renames)

    # ----------------------------------------------------------------- inputs

    def images(self, dtype: str = "float32"):
        import paddle

        return paddle.to_tensor(self.batch["images"].astype(dtype))

    def inputs(self, with_gt: bool = True, dtype: str = "float32"):
        """ppdet's input dict for the fixed batch (:func:`input_dict`)."""
        return input_dict(self.batch, with_gt, dtype)

    # ----------------------------------------------------------------- forward pieces

    def backbone_features(self):
        """C3, C4, C5 (the backbone's ``return_idx`` 1, 2, 3)."""
        return self.model().backbone({"image": self.images()})

    def fpn_features(self):
        model = self.model()
        return model.neck(model.backbone({"image": self.images()}))

    def head_outputs(self):
        """(cls logits, box deltas), lists over P3-P7, from the head in eval mode."""
        model = self.model()
        return model.head(self.fpn_features())

    # ----------------------------------------------------------------- step 4

    def loss_details(self, head_outputs=None):
        """Step 4's log: anchors, valid flags, targets, per-level losses and acc_sum after each.

        Args:
            head_outputs: ``(cls logits, box deltas)`` arrays per level (the reference's, from
                step 3's torch log) to compute targets and losses from; None runs our whole
                forward (backbone, FPN, head) first.
        """
        import paddle

        model = self.fresh_model()
        head = model.head
        inputs = self.inputs()
        record = {"cls": [], "reg": []}
        hooks = [
            head.loss_cls.register_forward_post_hook(
                lambda layer, _inp, out: record["cls"].append((out, layer.acc_sum.numpy().copy()))
            ),
            head.loss_bbox.register_forward_post_hook(
                lambda layer, _inp, out: record["reg"].append((out, layer.acc_sum.numpy().copy()))
            ),
        ]
        try:
            with paddle.no_grad():
                if head_outputs is None:
                    head_outs = head(model.neck(model.backbone(inputs)))
                else:
                    head_outs = _as_tensors(head_outputs)
                losses_cls, losses_reg = head.level_losses(head_outs, inputs)
                sizes = [tuple(x.shape[2:]) for x in head_outs[0]]
                from ppdet_ghm.modeling.head import split_targets

                gt_boxes, gt_labels = split_targets(inputs)
                labels, label_weights, box_targets, box_weights, num_pos = head.get_targets(
                    sizes, gt_boxes, gt_labels, inputs["im_shape"]
                )
        finally:
            for hook in hooks:
                hook.remove()
        if len(record["cls"]) != len(LEVELS) or len(record["reg"]) != len(LEVELS):
            raise ValueError(
                f"expected one loss_cls and one loss_bbox call per level ({len(LEVELS)}), got "
                f"{len(record['cls'])} and {len(record['reg'])}"
            )
        log = {}
        generator = head.anchor_generator
        for level, (h, w) in enumerate(sizes):
            log[f"anchors.{LEVELS[level]}"] = generator.level_anchors(level, h, w).numpy()
        divisor = head.pad_size_divisor
        log["valid_flags"] = np.stack(
            [
                generator.valid_flags(sizes, [-(-int(s) // divisor) * divisor for s in shape])
                for shape in self.batch["image_shapes"]
            ]
        ).astype(np.uint8)
        log["labels"] = labels.numpy().astype(np.int64)
        log["label_weights"] = label_weights.numpy()
        log["bbox_targets"] = box_targets.numpy()
        log["bbox_weights"] = box_weights.numpy()
        log["num_pos"] = np.array([sum(int(n) for n in num_pos)], dtype=np.int64)
        for i, level in enumerate(LEVELS):
            log[f"loss_cls.{level}"] = losses_cls[i].numpy().reshape(())
            log[f"loss_bbox.{level}"] = losses_reg[i].numpy().reshape(())
            log[f"ghmc.acc_sum.after_{level}"] = record["cls"][i][1]
            log[f"ghmr.acc_sum.after_{level}"] = record["reg"][i][1]
        return log

    # ----------------------------------------------------------------- step 5

    def train_iterations(
        self, args, selected: dict, final: tuple, parameter_names: list, final_buffers: tuple
    ):
        """Step 5's log (see ``align/step5_backward.py``), with Paddle's Momentum optimizer."""
        import paddle

        model = self.fresh_model(args.dtype)
        model.train()
        head = model.head
        rename = self.name_map()
        params = dict(model.named_parameters())
        unknown = [n for n in parameter_names if rename.get(n) not in params]
        if unknown:
            raise ValueError(f"no Paddle parameter for mmdet parameters {unknown[:5]}")
        trainable = [p for p in model.parameters() if not p.stop_gradient]
        optimizer = paddle.optimizer.Momentum(
            learning_rate=args.lr,
            momentum=args.momentum,
            parameters=trainable,
            weight_decay=paddle.regularizer.L2Decay(args.weight_decay),
            grad_clip=paddle.nn.ClipGradByGlobalNorm(args.clip),
        )
        record = {"cls": [], "reg": []}
        hooks = [
            head.loss_cls.register_forward_post_hook(
                lambda _layer, _inp, out: record["cls"].append(float(out))
            ),
            head.loss_bbox.register_forward_post_hook(
                lambda _layer, _inp, out: record["reg"].append(float(out))
            ),
        ]
        log = {}
        try:
            for it in range(args.iters):
                record["cls"].clear()
                record["reg"].clear()
                losses = model(self.inputs(dtype=args.dtype))
                loss = losses["loss"]
                optimizer.clear_grad()
                loss.backward()
                log[f"it{it}.loss"] = np.asarray(loss.numpy(), dtype=args.dtype).reshape(())
                for i, level in enumerate(LEVELS):
                    log[f"it{it}.loss_cls.{level}"] = np.array(record["cls"][i], dtype=args.dtype)
                    log[f"it{it}.loss_bbox.{level}"] = np.array(record["reg"][i], dtype=args.dtype)
                for name in selected:
                    grad = params[rename[name]].grad
                    if grad is None:
                        raise ValueError(f"{rename[name]} (mmdet {name}) got no gradient")
                    log[f"it{it}.grad.{name}"] = np.ascontiguousarray(
                        grad.numpy()[selected[name]], dtype=args.dtype
                    )
                norms = []
                for name in parameter_names:
                    param = params[rename[name]]
                    grad = None if param.stop_gradient else param.grad
                    norms.append(0.0 if grad is None else float(np.linalg.norm(grad.numpy())))
                log[f"it{it}.grad_norms"] = np.array(norms, dtype=args.dtype)
                optimizer.step()
                log[f"it{it}.ghmc.acc_sum"] = head.loss_cls.acc_sum.numpy().copy()
                log[f"it{it}.ghmr.acc_sum"] = head.loss_bbox.acc_sum.numpy().copy()
        finally:
            for hook in hooks:
                hook.remove()
            model.eval()
        for name in final:
            log[f"final.{name}"] = np.ascontiguousarray(
                params[rename[name]].numpy()[selected[name]], dtype=args.dtype
            )
        buffers = model.state_dict()
        for name in final_buffers:
            log[f"final_buffer.{name}"] = buffers[rename[name]].numpy().copy()
        self.load_weights(model)  # leave the shared model as the other steps expect it
        return log

    # ----------------------------------------------------------------- step 6

    def detections(self, head_outputs=None):
        """Step 6's log: per image boxes [K, 4], scores [K], labels [K], best first.

        Args:
            head_outputs: ``(cls logits, box deltas)`` arrays per level to post-process (the
                reference's, from step 3's torch log); None runs our whole model.
        """
        import paddle

        model = self.fresh_model()
        inputs = self.inputs(with_gt=False)
        with paddle.no_grad():
            if head_outputs is None:
                bbox, bbox_num = (model(inputs)[k] for k in ("bbox", "bbox_num"))
            else:
                bbox, bbox_num, _ = model.head.post_process(
                    _as_tensors(head_outputs), inputs["im_shape"], inputs["scale_factor"]
                )
        bbox = bbox.numpy()
        counts = bbox_num.numpy().astype(int).tolist()
        log = {}
        start = 0
        for i, count in enumerate(counts):
            rows = bbox[start : start + count]
            start += count
            log[f"img{i}.boxes"] = np.ascontiguousarray(rows[:, 2:6], dtype=np.float32)
            log[f"img{i}.scores"] = np.ascontiguousarray(rows[:, 1], dtype=np.float32)
            log[f"img{i}.labels"] = rows[:, 0].astype(np.int64)
        return log


def _as_tensors(head_outputs):
    """``(cls list, box list)`` of arrays -> the same of Paddle tensors."""
    import paddle

    cls_logits, bbox_deltas = head_outputs
    return [paddle.to_tensor(x) for x in cls_logits], [paddle.to_tensor(x) for x in bbox_deltas]
