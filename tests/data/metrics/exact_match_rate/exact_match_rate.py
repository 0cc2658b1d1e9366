import datasets
import evaluate


class ExactMatchRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to references.",
            citation="",
            inputs_description="predictions, references: lists of ints",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"exact_match_rate": sum(int(p == r) for p, r in zip(predictions, references)) / len(references)}
