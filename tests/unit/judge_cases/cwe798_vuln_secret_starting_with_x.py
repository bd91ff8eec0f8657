import smtplib


def send_digest(body: str) -> None:
    server = smtplib.SMTP("smtp.example.org", 587)
    server.login("digest-bot", password="Xq7-mail-Relay!")
    server.sendmail("digest-bot@example.org", ["team@example.org"], body)
