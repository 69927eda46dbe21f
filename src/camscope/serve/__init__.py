"""The web page: upload or pick an image, see the prediction and its CAM."""
