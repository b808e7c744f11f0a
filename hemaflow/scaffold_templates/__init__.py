"""Component skeletons for ``hemaflow new-plugin``, one module per kind.

Each module is a working plugin module: one component of its kind, named ``TemplateComponent``
(registered as ``template_component``), and the hook that registers it. The scaffold copies the
module into a new package and renames both (:mod:`hemaflow.core.scaffold`); the tests import
these modules as they are and run the conformance kit on them.
"""
