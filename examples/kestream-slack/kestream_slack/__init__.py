"""Slack notifications for kestream flows: ``SlackIncomingWebhook`` (see ``tasks``)."""
