"""hemaflow's shared science, used by the components under :mod:`hemaflow.plugins`.

Nothing here is a component or registers anything; each module is named for what it holds:

* :mod:`~hemaflow.lib.imageio`: reading, checking and writing image and mask files;
* :mod:`~hemaflow.lib.backbones`: timm model names, the one backbone factory and weights loader;
* :mod:`~hemaflow.lib.nets`: the classifier networks (image, tabular, multimodal, mask-guided);
* :mod:`~hemaflow.lib.training`: the one training loop, checkpoints and learning curves;
* :mod:`~hemaflow.lib.metrics`: classification and segmentation metrics, bootstrap intervals;
* :mod:`~hemaflow.lib.radiomics`: the PyRadiomics glue (parameters, extraction, workers);
* :mod:`~hemaflow.lib.smear_generator` (and :mod:`~hemaflow.lib.smear_cells`): the synthetic blood-smear generator;
* :mod:`~hemaflow.lib.stain`: stain normalization (torchstain wrappers, checks);
* augment, tensor_data, checkpoints (the training loop's parts), instance_matching, eval_figures,
  on_error: see docs/engine.md, "Layout".
"""
