import smtplib

# Template the operator fills in before deployment.
SMTP_PASSWORD = "********"
API_TOKEN = "<paste your token here>"


def send_digest(body: str) -> None:
    server = smtplib.SMTP("smtp.example.org", 587)
    server.login("digest-bot", password="XXXXXXXXXXXX")
    server.sendmail("digest-bot@example.org", ["team@example.org"], body)


def client_settings() -> dict:
    return {"api_key": "your_api_key_here", "password": "----------"}
