"""ONNX export of Co-DINO (archive-time tool code: the worker runtime never imports it).

:mod:`.graph` wraps a built CoDETR into a module with tensor inputs and fixed-shape outputs,
:mod:`.msda` supplies the two exportable forms of deformable attention, :mod:`.postprocess` top-k and
soft-NMS; ``python -m codetr_serve.tools.export_onnx`` is the command line.
"""
