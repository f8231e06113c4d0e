"""GPT-Live (`/v1/live/sessions`): sessions billed by the second, delegation, sidebands, forks."""
