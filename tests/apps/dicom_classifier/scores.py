"""Per-class precision, recall and F1 (NaN where undefined, e.g. a class no study has)."""

import numpy as np


def per_class_scores(labels, predictions, num_classes):
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    scores = {"precision": [], "recall": [], "f1-score": []}
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in range(num_classes):
            tp = np.sum((predictions == c) & (labels == c))
            precision = np.float64(tp) / np.sum(predictions == c)
            recall = np.float64(tp) / np.sum(labels == c)
            scores["precision"].append(precision)
            scores["recall"].append(recall)
            scores["f1-score"].append(2 * precision * recall / (precision + recall))
    return scores
