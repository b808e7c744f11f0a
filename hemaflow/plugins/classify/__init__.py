"""Classifiers: timm image models, scikit-learn baselines, tabular attention, multi-modal.

Components (kind ``classifier``); every one takes ``split: Split`` and, per fold, trains on the
training patients, selects (early stopping, checkpoint) on the validation patients only, and
predicts the test patients. Outputs ``predictions: Predictions`` (test rows of every fold:
``id, level, fold, y_true, y_pred, prob_<class>..., image_id, patient_id``) and ``model: Model``
(one safetensors/joblib file per fold, ``history.csv`` learning curves, meta with classes,
feature columns and scaler).

* ``image_classifier`` (:mod:`.images`): any timm model on fields (``field``), masked fields
  (``masked_field``: background painted white or black with the mask) or cell crops (``cell``),
  optionally mask-guided (``mask_attention``: valve | channel | spatial).
* ``sklearn_classifier`` (:mod:`.tabular`): logistic regression, random forest or gradient
  boosting on a FeatureTable, imputation and scaling fitted on the training partition only.
* ``tabular_attention`` (:mod:`.tabular`): FT-Transformer (feature tokens + transformer) or an
  MLP on a FeatureTable; feature attention saved (``feature_attention.csv``) and charted.
* ``multimodal`` (:mod:`.multimodal`): timm backbone + tabular branch (MLP or FT-Transformer) on
  the features of the same cell/image, fused by ``concat``, ``gated`` or ``attention``, trained
  end to end.
* ``apply_classifier`` (:mod:`.apply`): a trained model applied to new data.

What they share (labels, folds, predictions, the fold loop, parameter checks) is in
:mod:`.common`. Each module registers its own components (``hemaflow.plugins.DEFAULT_PLUGINS``).

The class list is always the input artifact's ``meta["classes"]``. Patient aggregation of
image/cell predictions is the ``classification`` evaluator's job.

Example::

    from hemaflow.testing import make, make_context
    out = make(ImageClassifier, backbone="test_resnet", image_size=32, epochs=1).run(
        make_context("/tmp/x"), images=images, split=split)
    out["predictions"].table.head()
"""

from __future__ import annotations

from hemaflow.plugins.classify.apply import ApplyClassifier
from hemaflow.plugins.classify.common import class_list, check_labels, check_same_classes
from hemaflow.plugins.classify.images import ImageClassifier
from hemaflow.plugins.classify.multimodal import MultiModal
from hemaflow.plugins.classify.tabular import Scaler, SklearnClassifier, TabularAttention, feature_matrix

COMPONENTS = (ImageClassifier, SklearnClassifier, TabularAttention, MultiModal, ApplyClassifier)

__all__ = ["COMPONENTS", "ApplyClassifier", "ImageClassifier", "MultiModal", "Scaler", "SklearnClassifier",
           "TabularAttention", "check_labels", "check_same_classes", "class_list", "feature_matrix"]
