"""Top-k accuracy as an `evaluate` metric module, loaded by path so that it works offline:
`evaluate.load("eval/metrics/top_k_accuracy")`."""

import datasets
import evaluate

_DESCRIPTION = """The share of examples whose label is among the model's k highest-scoring classes, for every k
asked (top-1 is the usual accuracy). `predictions` holds each example's class indices ranked best first (at least
max(k) of them); `references` its label."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): ranked class indices per example, best first.
    references (`list` of `int`): the true class index per example.
    k (`list` of `int`, default [1, 5]): the k values to report; each must be at most the ranking's length.
Returns:
    `top{k}` (`float`) for each k: the share of examples whose label is among the first k predictions.
Examples:
    >>> metric = evaluate.load("eval/metrics/top_k_accuracy")
    >>> metric.compute(predictions=[[2, 0], [1, 2]], references=[0, 2], k=[1, 2])
    {'top1': 0.0, 'top2': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)) -> dict:
        if not references:
            raise ValueError("references: empty; top-k accuracy needs at least one example.")
        ranked = min(len(row) for row in predictions)
        if max(k) > ranked:
            raise ValueError(f"k: got {list(k)}; allowed: values up to {ranked}, the length of the rankings given.")
        return {
            f"top{n}": sum(label in row[:n] for row, label in zip(predictions, references, strict=True))
            / len(references)
            for n in k
        }
