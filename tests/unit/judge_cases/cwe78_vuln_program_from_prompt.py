import subprocess


def open_report(report_path: str) -> None:
    viewer = input("Which program should open the report? ")
    subprocess.run([viewer, report_path], check=True)
