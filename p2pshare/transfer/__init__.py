"""Moving content between peers: the uploader, the downloader and what they share."""
