"""timm-camaug"""
