"""The images slots run: building them (build), the uv apps' dependency images (app), sending
them to a remote engine (send), and the labels that tie a database volume to what made it
(provenance)."""
