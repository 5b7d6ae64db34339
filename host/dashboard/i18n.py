"""The dashboard's words in Chinese (the default: the elders, families and grid workers read it)
and English. One table; templates call t("key")."""

from __future__ import annotations

LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"

TEXT: dict[str, tuple[str, str]] = {
    "title": ("邻里爱心卡", "CareCard"),
    "overview": ("总览", "Overview"),
    "alerts": ("告警", "Alerts"),
    "logout": ("退出", "Log out"),
    "login": ("登录", "Log in"),
    "account": ("账号", "Account"),
    "password": ("密码", "Password"),
    "login_failed": ("账号或密码不对", "Wrong account name or password"),
    "login_limited": ("尝试次数太多，请稍后再试", "Too many attempts: try again later"),
    "state.alert_open": ("告警未处理", "Alert open"),
    "state.check_needed": ("需要查看", "Check needed"),
    "state.offline": ("离线", "Offline"),
    "state.battery_low": ("电量低", "Battery low"),
    "state.not_worn": ("未佩戴", "Not worn"),
    "state.fine": ("正常", "Fine"),
    "last_seen": ("最后联系", "Last seen"),
    "battery": ("电量", "Battery"),
    "position": ("位置", "Position"),
    "never": ("从未", "never"),
    "ago": ("前", "ago"),
    "no_cards": ("没有可查看的卡", "No cards to show"),
    "track_of": ("轨迹", "Track of"),
    "day": ("日期", "Day"),
    "show": ("显示", "Show"),
    "home": ("家", "Home"),
    "timeline": ("当天记录", "The day's timeline"),
    "nothing_that_day": ("这一天没有记录", "Nothing recorded that day"),
    "battery_weeks": ("最近几周电量", "Battery over the last weeks"),
    "contacts": ("联系人", "Contacts"),
    "key": ("按键", "Key"),
    "no_map": ("地图库未安装（运行 make setup）", "The map library is not installed (run make setup)"),
    "no_positions": ("这一天没有位置", "No positions that day"),
    "open_alerts": ("未关闭的告警", "Alerts not closed"),
    "closed_alerts": ("已关闭的告警", "Closed alerts"),
    "no_alerts": ("没有告警", "No alerts"),
    "kind.sos": ("紧急求助", "SOS"),
    "kind.inactivity": ("长时间未动", "Not moving"),
    "kind.offline": ("离线", "Offline"),
    "kind.low_battery": ("电量低", "Battery low"),
    "kind.not_charged": ("长时间未充电", "Not charged"),
    "kind.card_not_worn": ("未佩戴", "Not worn"),
    "alert_state.open": ("未处理", "open"),
    "alert_state.acknowledged": ("已有人前往", "acknowledged"),
    "alert_state.resolved": ("已关闭", "resolved"),
    "opened": ("发生于", "opened"),
    "told": ("已通知", "told"),
    "acknowledged_by": ("前往的人", "acknowledged by"),
    "ack_pending": ("已请求，等待系统确认", "requested, waiting for the engine"),
    "refused": ("未接受", "refused"),
    "acknowledge": ("我去看看", "I'm going"),
    "resolve": ("关闭", "Resolve"),
    "reason": ("原因", "Reason"),
    "closed": ("关闭原因", "closed"),
    "by": ("由", "by"),
    "live": ("实时", "live"),
    "action_refused": ("操作未完成", "Not done"),
    "not_found": ("找不到这个页面", "Page not found"),
    "other_language": ("English", "中文"),
}


def translate(key: str, language: str) -> str:
    pair = TEXT.get(key)
    if pair is None:
        return key
    return pair[1] if language == "en" else pair[0]
