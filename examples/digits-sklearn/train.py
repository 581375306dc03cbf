"""Training entrypoint: the whole inference pipeline, preprocessing included."""

from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def train(x, y, *, seed: int, params: dict) -> Pipeline:
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "mlp",
                MLPClassifier(
                    hidden_layer_sizes=tuple(params["hidden_layer_sizes"]),
                    max_iter=params["max_iter"],
                    random_state=seed,
                ),
            ),
        ]
    )
    return pipeline.fit(x, y)
