"""Migration: vmd cannot migrate a guest yet; its commands say so."""
