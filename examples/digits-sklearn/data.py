"""Data entrypoint: scikit-learn's bundled digits, split once with a fixed seed."""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load() -> dict:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
