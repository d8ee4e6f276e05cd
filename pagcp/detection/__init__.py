"""Object detection: YOLOv5's loss with its task components (:mod:`.loss`), NMS, AP and mAP, pycocotools
(:mod:`.metrics`), and the validation loop (:mod:`.evaluate`)."""
