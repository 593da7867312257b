# Handles that move a conversation off-platform: WeChat / Telegram / WhatsApp IDs.
(?:wx|vx|v信|微信|薇信|威信)[:：]?\s*[a-z0-9_-]{5,}
(?:telegram|tg|whatsapp)[:：]?\s*@?[a-z0-9_]{4,}
