"""tools/bench_training_step.py: the anet stage's joint step benchmark runs and reports."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_training_step",
                                               REPO / "tools" / "bench_training_step.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_bench_times_the_stage_model_under_each_precision(capsys):
    import keras

    for _, filters, pool, precision, fused in bench.VARIANTS[-2:]:
        cpu, wall = bench.time_variant(filters, pool, precision, steps=1, batch=4, warmup=1,
                                       fused_batch_norm=fused)
        assert cpu > 0 and wall > 0
    assert keras.config.dtype_policy().name == "float32"
