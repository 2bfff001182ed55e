"""Object detection with prompted frozen ViTs: ViTDet's simple feature pyramid + torchvision detectors."""
from .data import CocoDetection, DetectionDataset, ImageRecord, write_coco
from .detector_model import DetectorModel
from .evaluation import coco_evaluate, draw_predictions, predictions_to_coco, write_predictions
from .model import DETECTORS, PromptedDetector
from .pennfudan import PennFudan
from .pyramid import SimpleFeaturePyramid
from .shapes import ShapesDetection
from .transforms import collate_detection, eval_transforms, train_transforms
from .voc import VOCDetection

__all__ = [
    "CocoDetection", "DETECTORS", "DetectionDataset", "DetectorModel", "ImageRecord", "PennFudan", "PromptedDetector",
    "ShapesDetection", "SimpleFeaturePyramid", "VOCDetection", "coco_evaluate", "collate_detection",
    "draw_predictions", "eval_transforms", "predictions_to_coco", "train_transforms", "write_coco",
    "write_predictions",
]
