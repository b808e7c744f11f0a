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
  :mod:`~hemaflow.lib.stain_stats`: the raw-image stain statistics of a bundle's stain check;
* :mod:`~hemaflow.lib.seg_nets` and :mod:`~hemaflow.lib.seg_weights`: the segmentation networks
  (build, train, predict, tile) and their weights files (shipped ``wbc-v1``, safetensors metadata);
* :mod:`~hemaflow.lib.encoder_training`: pre-training and embedding of cell crops (``instance_encoder``);
* :mod:`~hemaflow.lib.mil_nets`, :mod:`~hemaflow.lib.mil_bags`, :mod:`~hemaflow.lib.mil_training`:
  the MIL networks (the ``MILNet`` pooling contract), instances and bags, bag training;
  :mod:`~hemaflow.lib.mil_bundle`: a MIL step's bundle parts and model input;
* augment, tensor_data, checkpoints (the training loop's parts), instance_matching, eval_figures,
  on_error: see docs/engine.md, "Layout".
"""
