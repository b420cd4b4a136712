"""codetr-serve: serve Co-DETR (Co-DINO) with TorchServe."""
