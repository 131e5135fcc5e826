"""Training throughput of CoraModel on synthetic batches.

    KERAS_BACKEND=jax python -m benchmarks.train_step --config configs/f30k_gru.yaml \
        --batch-size 32 --steps 10

Batches follow the issue's statistics: 20-36 valid regions, 2-6 entities,
0-2 attributes per entity, 1..n relations, phrases of 1-3 words. Prints
the median seconds per step after one warm-up step, then `samples/s: X`.
"""

from __future__ import annotations

import keras

from benchmarks.synthetic_steps import median_step_seconds, step_arguments, synthetic_batches
from cora_keras.config import load_config
from cora_keras.model import CoraModel

# Budgets that fit the synthetic statistics (4 entities, 4 attributes, 2.5
# relations per caption on average).
FITTED_BUDGETS = ["model.entity_budget=5", "model.attribute_budget=5", "model.relation_budget=3.5"]


def main() -> None:
    parser = step_arguments(__doc__.splitlines()[0])
    parser.add_argument("--no-jit", action="store_true", help="compile without XLA")
    args = parser.parse_args()

    config = load_config(args.config, FITTED_BUDGETS + args.set)  # --set wins
    batches = synthetic_batches(config.model, args.batch_size, args.steps)
    model = CoraModel(config.model, config.loss)
    model.build()
    model.compile(
        optimizer=keras.optimizers.AdamW(config.train.learning_rate, weight_decay=config.train.weight_decay),
        # XLA on JAX only: TF's XLA is slower than plain TF here and cannot
        # compile the GRU scan's TensorArray; torch runs eagerly.
        jit_compile=not args.no_jit and keras.backend.backend() == "jax",
    )
    median = median_step_seconds(
        lambda x, y: float(model.train_on_batch(x, y, return_dict=True)["loss"]),
        batches,
        args.steps,
    )
    print(f"backend: {keras.backend.backend()}  batch: {args.batch_size}  "
          f"params: {model.count_params():,}  median step: {median:.3f} s")
    print(f"samples/s: {args.batch_size / median:.1f}")


if __name__ == "__main__":
    main()
