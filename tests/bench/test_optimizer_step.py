"""bench.bench_optimizer_step on a small model: both steps run, their times are printed, and the
two copies hold the same bits after every step (exit 0), or the script says NO and exits 1."""

import paddle

from bench import bench_optimizer_step, paddle_side


class _Small(paddle.nn.Layer):
    def __init__(self, seed: int):
        paddle.seed(seed)  # as paddle_side.build: the same weights for the same seed
        super().__init__()
        self.wide = paddle.nn.Linear(8, 70000)  # several pieces of the threaded update
        self.head = paddle.nn.Linear(8, 3)


def test_the_two_steps_agree_to_the_bit(monkeypatch, capsys, set_math_threads):
    set_math_threads(2)
    monkeypatch.setattr(paddle_side, "build", _Small)
    assert bench_optimizer_step.main(["--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "| 4 (0.6 M) |" in out and out.count("| yes |") == 1


def test_a_difference_is_reported(monkeypatch, capsys, set_math_threads):
    set_math_threads(2)
    monkeypatch.setattr(paddle_side, "build", _Small)
    real = bench_optimizer_step._optimizer

    def off_by_lr(model, threaded):  # the threaded copy steps with another learning rate
        optimizer = real(model, threaded)
        if threaded:
            optimizer.set_lr(0.001)
        return optimizer

    monkeypatch.setattr(bench_optimizer_step, "_optimizer", off_by_lr)
    assert bench_optimizer_step.main(["--repeats", "1"]) == 1
    assert "| NO |" in capsys.readouterr().out
